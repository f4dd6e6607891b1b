//! Replays: an archive's events with times in a window, put back into a bus with the replay's
//! name (EventBridge's `replay-name`), resumable. Each page of replayed events and the replay's
//! progress record are one atomic commit, the progress stream is appended at an exact version
//! (one writer), and replayed ids are derived from (replay, archive entry), so a restart or a
//! race neither skips nor repeats an event. A replay goes up to the archive's head at its start;
//! archived events older than the archive's retention are not replayed. Replayed events are
//! not archived again.

use std::time::Duration;

use outrider_proto::Event;
use outrider_store::{Direction, ExpectedVersion, StoreError, StreamAppend, StreamFrom};
use serde::{Deserialize, Serialize};

use super::defs::StoredReplay;
use super::dispatch::original;
use super::BusEngine;
use crate::error::{BusError, Result};
use crate::names;

/// EventBridge's replay states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplayState {
    Starting,
    Running,
    Cancelled,
    Completed,
    Failed,
}

impl ReplayState {
    fn terminal(self) -> bool {
        matches!(
            self,
            ReplayState::Cancelled | ReplayState::Completed | ReplayState::Failed
        )
    }
}

/// A replay's progress record (the detail of each event in `bus-replay/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Progress {
    pub state: ReplayState,
    /// The next archive version to look at.
    pub next: u64,
    pub replayed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_replayed_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `DescribeReplay`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayStatus {
    pub name: String,
    pub archive: String,
    pub state: ReplayState,
    pub state_reason: Option<String>,
    /// Events put back so far.
    pub replayed: u64,
    /// Archive entries looked at so far, of `total`.
    pub scanned: u64,
    pub total: u64,
    pub event_last_replayed_ms: Option<i64>,
    pub started_ms: i64,
}

const PAGE: usize = 512;

async fn last_progress(engine: &BusEngine, name: &str) -> Result<Option<(u64, Progress)>> {
    let page = engine
        .inner
        .store
        .read_stream(
            &names::replay_stream(name),
            StreamFrom::End,
            Direction::Backwards,
            1,
        )
        .await?;
    match page.events.first() {
        None => Ok(None),
        Some(e) => {
            let p: Progress = serde_json::from_str(&e.detail).map_err(|err| {
                BusError::Validation(format!(
                    "replay {name}: progress record {} unreadable: {err}",
                    e.id
                ))
            })?;
            Ok(Some((e.version, p)))
        }
    }
}

pub(crate) async fn describe(engine: &BusEngine, name: &str) -> Result<ReplayStatus> {
    let r = engine
        .definitions()
        .replays
        .get(name)
        .cloned()
        .ok_or_else(|| BusError::NotFound(format!("Replay {name} does not exist.")))?;
    let p = last_progress(engine, name).await?.map(|(_, p)| p);
    Ok(ReplayStatus {
        name: name.to_string(),
        archive: r.def.archive_name.clone(),
        state: p.as_ref().map_or(ReplayState::Starting, |p| p.state),
        state_reason: p.as_ref().and_then(|p| p.reason.clone()),
        replayed: p.as_ref().map_or(0, |p| p.replayed),
        scanned: p.as_ref().map_or(0, |p| p.next),
        total: r.archive_head,
        event_last_replayed_ms: p.as_ref().and_then(|p| p.last_replayed_ms),
        started_ms: r.started_ms,
    })
}

impl BusEngine {
    /// `CancelReplay`: the replay stops after its current page.
    pub async fn cancel_replay(&self, name: &str) -> Result<()> {
        if !self.definitions().replays.contains_key(name) {
            return Err(BusError::NotFound(format!("Replay {name} does not exist.")));
        }
        loop {
            let last = last_progress(self, name).await?;
            let (expected, p) = match &last {
                None => (ExpectedVersion::NoStream, None),
                Some((v, p)) => (ExpectedVersion::Exact(*v), Some(p.clone())),
            };
            if let Some(p) = &p {
                if p.state.terminal() {
                    return Err(BusError::Validation(format!(
                        "Replay {name} is {:?}; it cannot be cancelled.",
                        p.state
                    )));
                }
            }
            let p = p.unwrap_or(Progress {
                state: ReplayState::Starting,
                next: 0,
                replayed: 0,
                last_replayed_ms: None,
                reason: None,
            });
            let rec = Progress {
                state: ReplayState::Cancelled,
                reason: Some("cancelled".into()),
                ..p
            };
            match self
                .inner
                .store
                .append(
                    &names::replay_stream(name),
                    expected,
                    vec![progress_event(name, &rec)?],
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::WrongExpectedVersion { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The rules a replayed event may go to (`None`: not a known replay; empty: all rules).
    pub(crate) fn replay_filter(&self, replay: &str) -> Option<Vec<String>> {
        self.inner
            .defs
            .lock()
            .0
            .replays
            .get(replay)
            .map(|r| r.def.filter_rules.clone())
    }
}

fn progress_event(name: &str, p: &Progress) -> Result<Event> {
    Ok(Event {
        id: names::derived_id(&[
            "replay-progress",
            name,
            &p.next.to_string(),
            &format!("{:?}", p.state),
        ]),
        source: "outrider.bus".into(),
        detail_type: "Replay Progress".into(),
        detail: serde_json::to_string(p).map_err(|e| BusError::Validation(e.to_string()))?,
        ..Event::default()
    })
}

pub(crate) async fn replay(engine: BusEngine, r: StoredReplay) {
    loop {
        match run(&engine, &r).await {
            Ok(()) | Err(BusError::Closed) => return,
            Err(e) => {
                tracing::warn!(replay = %r.def.replay_name, error = %e, "replay failed; resuming");
                let mut stop = engine.inner.stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

async fn run(engine: &BusEngine, r: &StoredReplay) -> Result<()> {
    let name = &r.def.replay_name;
    let store = engine.inner.store.clone();
    let pstream = names::replay_stream(name);
    loop {
        if *engine.inner.stop.borrow() {
            return Err(BusError::Closed);
        }
        let last = last_progress(engine, name).await?;
        let (expected, mut p) = match last {
            None => (
                ExpectedVersion::NoStream,
                Progress {
                    state: ReplayState::Starting,
                    next: 0,
                    replayed: 0,
                    last_replayed_ms: None,
                    reason: None,
                },
            ),
            Some((v, p)) => (ExpectedVersion::Exact(v), p),
        };
        if p.state.terminal() {
            return Ok(());
        }
        let archive = engine
            .definitions()
            .archives
            .get(&r.def.archive_name)
            .cloned();
        let Some(archive) = archive else {
            let rec = Progress {
                state: ReplayState::Failed,
                reason: Some(format!("archive {} was deleted", r.def.archive_name)),
                ..p
            };
            store
                .append(&pstream, expected, vec![progress_event(name, &rec)?])
                .await?;
            return Ok(());
        };
        let dest = r
            .def
            .destination_bus
            .clone()
            .unwrap_or_else(|| archive.def.event_bus_name.clone());
        let cutoff = (archive.def.retention_days > 0)
            .then(|| engine.now_ms() - i64::from(archive.def.retention_days) * 86_400_000);
        let mut appends = Vec::new();
        if p.next < r.archive_head {
            let max = ((r.archive_head - p.next) as usize).min(PAGE);
            let page = store
                .read_stream(
                    &names::archive_stream(&archive.def.event_bus_name, &archive.def.archive_name),
                    StreamFrom::Version(p.next),
                    Direction::Forwards,
                    max,
                )
                .await?;
            let mut out = Vec::new();
            for a in page.events.iter().take(max) {
                p.next = a.version + 1;
                let t = a.time_seconds * 1000 + i64::from(a.time_nanos / 1_000_000);
                if t < r.def.event_start_time_ms
                    || t >= r.def.event_end_time_ms
                    || cutoff.is_some_and(|c| t < c)
                {
                    continue;
                }
                let mut e = original(a);
                e.extensions.insert(
                    "outriderreplayof".into(),
                    serde_json::Value::from(e.id.as_str()).to_string(),
                );
                e.id = names::derived_id(&["replay", name, &a.id]);
                e.replay_name = name.clone();
                e.event_bus_name = dest.clone();
                e.stream.clear();
                e.position = 0;
                e.version = 0;
                p.last_replayed_ms = Some(t);
                p.replayed += 1;
                out.push(e);
            }
            if page.events.is_empty() {
                p.next = r.archive_head; // the archive has less than it had (cannot happen; be safe)
            }
            let n = out.len() as u64;
            if !out.is_empty() {
                appends.push(StreamAppend {
                    stream: names::bus_stream(&dest),
                    expected: ExpectedVersion::Any,
                    events: out,
                });
            }
            engine
                .inner
                .stats
                .replayed
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        p.state = if p.next >= r.archive_head {
            ReplayState::Completed
        } else {
            ReplayState::Running
        };
        appends.push(StreamAppend {
            stream: pstream.clone(),
            expected,
            events: vec![progress_event(name, &p)?],
        });
        match store.append_batch(appends, None).await {
            Ok(_) => {}
            Err(StoreError::WrongExpectedVersion { .. }) => continue, // cancelled or raced: re-read
            Err(e) => return Err(e.into()),
        }
        if p.state == ReplayState::Completed {
            return Ok(());
        }
    }
}
