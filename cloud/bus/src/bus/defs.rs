//! The bus's definitions (buses, rules, archives, replays), event-sourced in the `bus-config`
//! stream: every change is an event, and the state is the fold of them. A restarted server —
//! or another replica — reads the stream and has the same definitions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{ArchiveDef, RuleDef};

/// A replay's definition (EventBridge's `StartReplay`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReplayDef {
    pub replay_name: String,
    pub archive_name: String,
    /// The window of event times replayed, Unix ms: `[start, end)`.
    pub event_start_time_ms: i64,
    pub event_end_time_ms: i64,
    /// The bus replayed into (the archive's bus by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_bus: Option<String>,
    /// Only these rules see the replayed events (all rules when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter_rules: Vec<String>,
}

/// One change to the definitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "Change")]
pub enum Change {
    BusCreated {
        name: String,
    },
    BusDeleted {
        name: String,
    },
    RulePut {
        rule: RuleDef,
        created_ms: i64,
    },
    RuleDeleted {
        bus: String,
        name: String,
    },
    ArchiveCreated {
        archive: ArchiveDef,
        created_ms: i64,
    },
    ArchiveDeleted {
        name: String,
    },
    ReplayStarted {
        replay: ReplayDef,
        archive_head: u64,
        started_ms: i64,
    },
}

impl Change {
    pub fn kind(&self) -> &'static str {
        match self {
            Change::BusCreated { .. } => "BusCreated",
            Change::BusDeleted { .. } => "BusDeleted",
            Change::RulePut { .. } => "RulePut",
            Change::RuleDeleted { .. } => "RuleDeleted",
            Change::ArchiveCreated { .. } => "ArchiveCreated",
            Change::ArchiveDeleted { .. } => "ArchiveDeleted",
            Change::ReplayStarted { .. } => "ReplayStarted",
        }
    }
}

/// A rule as stored: its definition and when it was first created (rates count from it).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRule {
    pub def: RuleDef,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredArchive {
    pub def: ArchiveDef,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredReplay {
    pub def: ReplayDef,
    /// The archive stream's next version when the replay started: it replays up to there.
    pub archive_head: u64,
    pub started_ms: i64,
}

/// The fold of every [`Change`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Definitions {
    /// bus → its rules by name.
    pub buses: BTreeMap<String, BTreeMap<String, StoredRule>>,
    pub archives: BTreeMap<String, StoredArchive>,
    pub replays: BTreeMap<String, StoredReplay>,
}

impl Definitions {
    /// A fresh state: only the `default` bus exists.
    pub fn initial() -> Self {
        let mut d = Definitions::default();
        d.buses.insert("default".into(), BTreeMap::new());
        d
    }

    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::BusCreated { name } => {
                self.buses.entry(name.clone()).or_default();
            }
            Change::BusDeleted { name } => {
                self.buses.remove(name);
                self.archives.retain(|_, a| &a.def.event_bus_name != name);
            }
            Change::RulePut { rule, created_ms } => {
                let rules = self.buses.entry(rule.event_bus_name.clone()).or_default();
                let created_ms = rules.get(&rule.name).map_or(*created_ms, |r| r.created_ms);
                rules.insert(
                    rule.name.clone(),
                    StoredRule {
                        def: rule.clone(),
                        created_ms,
                    },
                );
            }
            Change::RuleDeleted { bus, name } => {
                if let Some(rules) = self.buses.get_mut(bus) {
                    rules.remove(name);
                }
            }
            Change::ArchiveCreated {
                archive,
                created_ms,
            } => {
                self.archives.insert(
                    archive.archive_name.clone(),
                    StoredArchive {
                        def: archive.clone(),
                        created_ms: *created_ms,
                    },
                );
            }
            Change::ArchiveDeleted { name } => {
                self.archives.remove(name);
            }
            Change::ReplayStarted {
                replay,
                archive_head,
                started_ms,
            } => {
                self.replays.insert(
                    replay.replay_name.clone(),
                    StoredReplay {
                        def: replay.clone(),
                        archive_head: *archive_head,
                        started_ms: *started_ms,
                    },
                );
            }
        }
    }

    pub fn rule(&self, bus: &str, name: &str) -> Option<&StoredRule> {
        self.buses.get(bus)?.get(name)
    }
}
