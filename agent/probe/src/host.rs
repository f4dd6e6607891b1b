//! Host health: a [`HostSampler`] reads CPU, memory, disks, network interfaces, load and uptime
//! (sysinfo 0.40 with only its `system`, `disk` and `network` parts; NIC drop counters from
//! `/proc/net/dev`, which sysinfo does not read), and a sans-IO [`AlertEvaluator`] turns samples
//! into typed [`HostAlert`]s with hysteresis.
//!
//! # Alerts
//!
//! * **Disk usage** per mount point: raised when used ≥ `disk.enter` percent, cleared when
//!   used ≤ `disk.exit` (`exit < enter`); in between nothing changes.
//! * **Memory usage**: the same, with `memory`.
//! * **NIC errors/drops**: raised when any of an interface's error or drop counters grew by at
//!   least `nic_min_increase` since the previous sample; cleared after `nic_quiet_samples`
//!   samples in a row without growth. A counter that went *down* (interface recreated, counters
//!   reset) only re-bases.
//!
//! Each alert is raised once when crossing and cleared once; [`AlertEvaluator::active`] lists
//! those raised now.

use std::collections::{BTreeMap, BTreeSet};

use crate::health::Hysteresis;

/// A mount point's usage.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskSample {
    pub mount: String,
    pub file_system: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

impl DiskSample {
    /// Used space in percent of total (0 for a zero-sized file system).
    pub fn used_percent(&self) -> f64 {
        if self.total_bytes == 0 {
            0.0
        } else {
            (self.total_bytes.saturating_sub(self.available_bytes)) as f64 * 100.0
                / self.total_bytes as f64
        }
    }
}

/// An interface's cumulative counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NicCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_drops: u64,
    pub tx_drops: u64,
}

/// One reading of the host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostSample {
    /// `now` of the reading (ms, the shell's clock).
    pub at_ms: u64,
    /// Global CPU usage in percent (0 on the first reading: it needs two).
    pub cpu_percent: f32,
    pub cpus: usize,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    /// 1, 5 and 15 minute load averages (None where the OS has none).
    pub load: Option<[f64; 3]>,
    pub uptime_seconds: Option<u64>,
    pub disks: Vec<DiskSample>,
    pub nics: BTreeMap<String, NicCounters>,
}

impl HostSample {
    /// Used memory in percent of total (total − available).
    pub fn memory_used_percent(&self) -> f64 {
        if self.memory_total_bytes == 0 {
            0.0
        } else {
            self.memory_total_bytes
                .saturating_sub(self.memory_available_bytes) as f64
                * 100.0
                / self.memory_total_bytes as f64
        }
    }
}

/// The host could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("reading {what} with sysinfo: {detail}")]
    Sysinfo { what: &'static str, detail: String },
}

/// Reads the host (keeps sysinfo's state so CPU usage is a difference between readings).
pub struct HostSampler {
    system: sysinfo::System,
    disks: sysinfo::Disks,
    networks: sysinfo::Networks,
}

impl std::fmt::Debug for HostSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSampler").finish_non_exhaustive()
    }
}

impl HostSampler {
    pub fn new() -> Result<Self, HostError> {
        let err = |what| {
            move |e: sysinfo::Error| HostError::Sysinfo {
                what,
                detail: e.to_string(),
            }
        };
        Ok(Self {
            system: sysinfo::System::new().map_err(err("system"))?,
            disks: sysinfo::Disks::new_with_refreshed_list().map_err(err("disks"))?,
            networks: sysinfo::Networks::new_with_refreshed_list().map_err(err("networks"))?,
        })
    }

    /// Reads everything once (blocking file reads of /proc and /sys: call it from a blocking
    /// task or a thread in an async program).
    pub fn sample(&mut self, at_ms: u64) -> HostSample {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        self.networks.refresh(true);
        let drops = std::fs::read_to_string("/proc/net/dev")
            .map(|t| parse_proc_net_dev(&t))
            .unwrap_or_default();
        let nics = self
            .networks
            .iter()
            .map(|(name, n)| {
                let name = name.to_string_lossy().into_owned();
                let d = drops.get(&name).copied().unwrap_or_default();
                let c = NicCounters {
                    rx_bytes: n.total_received(),
                    tx_bytes: n.total_transmitted(),
                    rx_errors: n.total_errors_on_received(),
                    tx_errors: n.total_errors_on_transmitted(),
                    rx_drops: d.rx_drops,
                    tx_drops: d.tx_drops,
                };
                (name, c)
            })
            .collect();
        let disks = self
            .disks
            .iter()
            .map(|d| DiskSample {
                mount: d.mount_point().to_string_lossy().into_owned(),
                file_system: d.file_system().to_string_lossy().into_owned(),
                total_bytes: d.total_space(),
                available_bytes: d.available_space(),
            })
            .collect();
        HostSample {
            at_ms,
            cpu_percent: self.system.global_cpu_usage(),
            cpus: self.system.cpus().len(),
            memory_total_bytes: self.system.total_memory(),
            memory_available_bytes: self.system.available_memory(),
            swap_total_bytes: self.system.total_swap(),
            swap_used_bytes: self.system.used_swap(),
            load: sysinfo::System::load_average()
                .ok()
                .map(|l| [l.one, l.five, l.fifteen]),
            uptime_seconds: sysinfo::System::uptime().ok(),
            disks,
            nics,
        }
    }
}

/// Parses `/proc/net/dev` into counters per interface (all six fields filled; lines that do
/// not parse are skipped).
pub fn parse_proc_net_dev(text: &str) -> BTreeMap<String, NicCounters> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let f: Vec<u64> = rest
            .split_whitespace()
            .map_while(|v| v.parse().ok())
            .collect();
        // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs drop ...
        if f.len() < 12 {
            continue;
        }
        out.insert(
            name.trim().to_string(),
            NicCounters {
                rx_bytes: f[0],
                rx_errors: f[2],
                rx_drops: f[3],
                tx_bytes: f[8],
                tx_errors: f[10],
                tx_drops: f[11],
            },
        );
    }
    out
}

/// Alert thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertConfig {
    /// Disk used percent (default enter 90, exit 85).
    pub disk: Hysteresis<f64>,
    /// Memory used percent (default enter 95, exit 90).
    pub memory: Hysteresis<f64>,
    /// Growth of any error/drop counter between two samples that raises (default 1).
    pub nic_min_increase: u64,
    /// Samples in a row without growth that clear (default 3).
    pub nic_quiet_samples: u32,
    /// Mount points whose file system is one of these are ignored (default: pseudo and
    /// read-only image file systems).
    pub ignore_file_systems: Vec<String>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            disk: Hysteresis {
                enter: 90.0,
                exit: 85.0,
            },
            memory: Hysteresis {
                enter: 95.0,
                exit: 90.0,
            },
            nic_min_increase: 1,
            nic_quiet_samples: 3,
            ignore_file_systems: ["tmpfs", "devtmpfs", "overlay", "squashfs", "iso9660"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// What an alert is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertSubject {
    Disk { mount: String },
    Memory,
    Nic { interface: String },
}

/// An alert raised or cleared, with the figures of that moment.
#[derive(Debug, Clone, PartialEq)]
pub enum HostAlert {
    DiskFull {
        at_ms: u64,
        mount: String,
        used_percent: f64,
        threshold: f64,
    },
    DiskCleared {
        at_ms: u64,
        mount: String,
        used_percent: f64,
    },
    MemoryHigh {
        at_ms: u64,
        used_percent: f64,
        threshold: f64,
    },
    MemoryCleared {
        at_ms: u64,
        used_percent: f64,
    },
    /// Counters grew by these amounts since the previous sample.
    NicErrors {
        at_ms: u64,
        interface: String,
        increase: NicCounters,
    },
    NicCleared {
        at_ms: u64,
        interface: String,
        quiet_samples: u32,
    },
}

/// The sans-IO evaluator: feed samples in order, get alerts.
#[derive(Debug)]
pub struct AlertEvaluator {
    config: AlertConfig,
    active: BTreeSet<AlertSubject>,
    previous: BTreeMap<String, NicCounters>,
    quiet: BTreeMap<String, u32>,
}

impl AlertEvaluator {
    pub fn new(config: AlertConfig) -> Self {
        Self {
            config,
            active: BTreeSet::new(),
            previous: BTreeMap::new(),
            quiet: BTreeMap::new(),
        }
    }

    /// The alerts raised now.
    pub fn active(&self) -> impl Iterator<Item = &AlertSubject> {
        self.active.iter()
    }

    /// Judges one sample; returns the alerts raised and cleared by it.
    pub fn evaluate(&mut self, s: &HostSample) -> Vec<HostAlert> {
        let mut out = Vec::new();
        let at_ms = s.at_ms;

        let mut mounts_seen = BTreeSet::new();
        for d in &s.disks {
            if self.config.ignore_file_systems.contains(&d.file_system) {
                continue;
            }
            mounts_seen.insert(d.mount.clone());
            let used = d.used_percent();
            let subject = AlertSubject::Disk {
                mount: d.mount.clone(),
            };
            let h = self.config.disk;
            if !self.active.contains(&subject) && used >= h.enter {
                self.active.insert(subject);
                out.push(HostAlert::DiskFull {
                    at_ms,
                    mount: d.mount.clone(),
                    used_percent: used,
                    threshold: h.enter,
                });
            } else if self.active.contains(&subject) && used <= h.exit {
                self.active.remove(&subject);
                out.push(HostAlert::DiskCleared {
                    at_ms,
                    mount: d.mount.clone(),
                    used_percent: used,
                });
            }
        }
        // A mount that disappeared cannot stay alerted.
        let gone: Vec<AlertSubject> = self
            .active
            .iter()
            .filter(|a| matches!(a, AlertSubject::Disk { mount } if !mounts_seen.contains(mount)))
            .cloned()
            .collect();
        for g in gone {
            self.active.remove(&g);
        }

        if s.memory_total_bytes > 0 {
            let used = s.memory_used_percent();
            let h = self.config.memory;
            let on = self.active.contains(&AlertSubject::Memory);
            if !on && used >= h.enter {
                self.active.insert(AlertSubject::Memory);
                out.push(HostAlert::MemoryHigh {
                    at_ms,
                    used_percent: used,
                    threshold: h.enter,
                });
            } else if on && used <= h.exit {
                self.active.remove(&AlertSubject::Memory);
                out.push(HostAlert::MemoryCleared {
                    at_ms,
                    used_percent: used,
                });
            }
        }

        for (name, now) in &s.nics {
            let Some(prev) = self.previous.insert(name.clone(), *now) else {
                continue; // first sight: the baseline
            };
            let grew = |a: u64, b: u64| a.saturating_sub(b);
            let inc = NicCounters {
                rx_bytes: grew(now.rx_bytes, prev.rx_bytes),
                tx_bytes: grew(now.tx_bytes, prev.tx_bytes),
                rx_errors: grew(now.rx_errors, prev.rx_errors),
                tx_errors: grew(now.tx_errors, prev.tx_errors),
                rx_drops: grew(now.rx_drops, prev.rx_drops),
                tx_drops: grew(now.tx_drops, prev.tx_drops),
            };
            let bad = [inc.rx_errors, inc.tx_errors, inc.rx_drops, inc.tx_drops]
                .into_iter()
                .any(|v| v >= self.config.nic_min_increase.max(1));
            let subject = AlertSubject::Nic {
                interface: name.clone(),
            };
            if bad {
                self.quiet.insert(name.clone(), 0);
                if self.active.insert(subject) {
                    out.push(HostAlert::NicErrors {
                        at_ms,
                        interface: name.clone(),
                        increase: inc,
                    });
                }
            } else if self.active.contains(&subject) {
                let q = self.quiet.entry(name.clone()).or_insert(0);
                *q += 1;
                if *q >= self.config.nic_quiet_samples {
                    let quiet_samples = *q;
                    self.quiet.remove(name);
                    self.active.remove(&subject);
                    out.push(HostAlert::NicCleared {
                        at_ms,
                        interface: name.clone(),
                        quiet_samples,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, disk_used_pct: u64, nic: NicCounters) -> HostSample {
        HostSample {
            at_ms,
            memory_total_bytes: 1000,
            memory_available_bytes: 500,
            disks: vec![
                DiskSample {
                    mount: "/var/lib/outrider".into(),
                    file_system: "ext4".into(),
                    total_bytes: 1000,
                    available_bytes: 1000 - disk_used_pct * 10,
                },
                DiskSample {
                    mount: "/run".into(),
                    file_system: "tmpfs".into(),
                    total_bytes: 10,
                    available_bytes: 0,
                },
            ],
            nics: [("eth0".to_string(), nic)].into_iter().collect(),
            ..HostSample::default()
        }
    }

    #[test]
    fn disk_alert_is_raised_once_and_cleared_under_the_lower_threshold() {
        let mut e = AlertEvaluator::new(AlertConfig::default());
        let n = NicCounters::default();
        assert!(e.evaluate(&sample(0, 80, n)).is_empty());
        let a = e.evaluate(&sample(1, 91, n));
        assert_eq!(
            a,
            vec![HostAlert::DiskFull {
                at_ms: 1,
                mount: "/var/lib/outrider".into(),
                used_percent: 91.0,
                threshold: 90.0
            }]
        );
        // Still over, then inside the band: nothing new. (tmpfs at 100% is ignored.)
        assert!(e.evaluate(&sample(2, 95, n)).is_empty());
        assert!(e.evaluate(&sample(3, 87, n)).is_empty());
        assert_eq!(e.active().count(), 1);
        let a = e.evaluate(&sample(4, 85, n));
        assert!(
            matches!(&a[..], [HostAlert::DiskCleared { used_percent, .. }] if *used_percent == 85.0)
        );
        assert_eq!(e.active().count(), 0);
        // Crossing again raises again.
        assert_eq!(e.evaluate(&sample(5, 90, n)).len(), 1);
    }

    #[test]
    fn nic_alert_on_growing_errors_or_drops_clears_after_quiet_samples() {
        let mut e = AlertEvaluator::new(AlertConfig::default());
        let mut c = NicCounters {
            rx_errors: 5,
            rx_drops: 7,
            ..NicCounters::default()
        };
        // The first sample is the baseline, however high its counters.
        assert!(e.evaluate(&sample(0, 10, c)).is_empty());
        c.rx_bytes += 1000; // traffic alone is fine
        assert!(e.evaluate(&sample(1, 10, c)).is_empty());
        c.tx_drops += 3;
        let a = e.evaluate(&sample(2, 10, c));
        match &a[..] {
            [HostAlert::NicErrors {
                interface,
                increase,
                ..
            }] => {
                assert_eq!(interface, "eth0");
                assert_eq!(increase.tx_drops, 3);
                assert_eq!(increase.rx_errors, 0);
            }
            a => panic!("{a:?}"),
        }
        // Growing more: no second alert; quiet samples count from the last growth.
        c.rx_errors += 1;
        assert!(e.evaluate(&sample(3, 10, c)).is_empty());
        assert!(e.evaluate(&sample(4, 10, c)).is_empty());
        assert!(e.evaluate(&sample(5, 10, c)).is_empty());
        let a = e.evaluate(&sample(6, 10, c));
        assert_eq!(
            a,
            vec![HostAlert::NicCleared {
                at_ms: 6,
                interface: "eth0".into(),
                quiet_samples: 3
            }]
        );
        // Counters reset (interface recreated): re-based, no alert.
        assert!(e
            .evaluate(&sample(7, 10, NicCounters::default()))
            .is_empty());
    }

    #[test]
    fn memory_alert_has_hysteresis() {
        let mut e = AlertEvaluator::new(AlertConfig::default());
        let mut s = sample(0, 10, NicCounters::default());
        s.memory_available_bytes = 40; // 96%
        assert!(matches!(
            &e.evaluate(&s)[..],
            [HostAlert::MemoryHigh { .. }]
        ));
        s.memory_available_bytes = 80; // 92%: in the band
        assert!(e.evaluate(&s).is_empty());
        s.memory_available_bytes = 100; // 90%
        assert!(matches!(
            &e.evaluate(&s)[..],
            [HostAlert::MemoryCleared { .. }]
        ));
    }

    #[test]
    fn proc_net_dev_is_parsed() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo: 1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n  \
eth0: 5000      50    2    3    0     0          0         0     6000      60    4    5    0     0       0          0\n\
garbage line\n";
        let m = parse_proc_net_dev(text);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m["eth0"],
            NicCounters {
                rx_bytes: 5000,
                tx_bytes: 6000,
                rx_errors: 2,
                tx_errors: 4,
                rx_drops: 3,
                tx_drops: 5
            }
        );
    }

    #[test]
    fn reads_the_real_host_once() {
        let mut s = HostSampler::new().expect("sysinfo works on this host");
        let h = s.sample(0);
        assert!(h.cpus >= 1, "{h:?}");
        assert!(h.memory_total_bytes > 0);
        assert!(h.memory_available_bytes <= h.memory_total_bytes);
        assert!(h.uptime_seconds.is_some_and(|u| u > 0));
        assert!(!h.disks.is_empty(), "no mounts read");
        assert!(
            h.nics.contains_key("lo"),
            "no loopback in {:?}",
            h.nics.keys()
        );
        for d in &h.disks {
            assert!((0.0..=100.0).contains(&d.used_percent()), "{d:?}");
        }
        // The evaluator accepts a real sample.
        let _ = AlertEvaluator::new(AlertConfig::default()).evaluate(&h);
    }
}
