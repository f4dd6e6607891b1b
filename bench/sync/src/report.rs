//! The benchmark's table and verdicts.

use crate::Transport;

/// One measured row: a transport and an event size.
#[derive(Debug, Clone)]
pub struct Row {
    pub transport: Transport,
    pub size: u32,
    pub events: u64,
    /// Average encoded event bytes as the agent's log holds them (= raw TCP frame bytes).
    pub encoded_bytes: f64,
    pub events_per_s: f64,
    pub raw_events_per_s: f64,
    /// From starting the agent process to the cloud's first commit.
    pub start_to_first_commit_s: f64,
    /// (p50 ms, p99 ms, events measured), when the latency phase ran.
    pub latency: Option<(f64, f64, usize)>,
    /// Cores busy during the drain: the agent, this process (the cloud), other processes.
    pub drain_cpu: crate::cpu::Usage,
    /// Cores kept busy by other processes during the latency run.
    pub others_latency: Option<f64>,
}

impl Row {
    pub fn mb_per_s(&self) -> f64 {
        self.events_per_s * self.encoded_bytes / 1e6
    }
    pub fn raw_mb_per_s(&self) -> f64 {
        self.raw_events_per_s * self.encoded_bytes / 1e6
    }
    pub fn ratio(&self) -> f64 {
        self.events_per_s / self.raw_events_per_s.max(1e-9)
    }
}

pub fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}K", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn label(size: u32) -> String {
    if size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// The Markdown table.
pub fn table(rows: &[Row], rate_per_s: u32) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "| transport | event | events | sync events/s | sync MB/s | raw TCP events/s | raw TCP MB/s | sync ÷ raw TCP | start → first commit | p50 ms @ {} /s | p99 ms @ {} /s | agent CPU | cloud CPU | other processes |\n",
        rate(f64::from(rate_per_s)),
        rate(f64::from(rate_per_s))
    ));
    s.push_str(
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let (p50, p99) = match r.latency {
            Some((p50, p99, _)) => (format!("{p50:.1}"), format!("{p99:.1}")),
            None => ("–".into(), "–".into()),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {} | {:.1} | {:.2}× ({:.0} %) | {:.2} s | {p50} | {p99} | {:.2} | {:.2} | {:.2}{} |\n",
            r.transport.name(),
            label(r.size),
            r.events,
            rate(r.events_per_s),
            r.mb_per_s(),
            rate(r.raw_events_per_s),
            r.raw_mb_per_s(),
            r.ratio(),
            r.ratio() * 100.0,
            r.start_to_first_commit_s,
            r.drain_cpu.pids,
            r.drain_cpu.this,
            r.drain_cpu.others,
            r.others_latency
                .map(|o| format!(" / {o:.2}"))
                .unwrap_or_default(),
        ));
    }
    s
}

/// The targets, judged on the rows measured.
/// The loopback targets are judged only when `loopback` (no prefix, a loopback address).
pub fn verdicts(rows: &[Row], loopback: bool) -> Vec<String> {
    let mut out = Vec::new();
    let find = |t: Transport, size: u32| rows.iter().find(|r| r.transport == t && r.size == size);
    match find(Transport::Quic, 256) {
        Some(_) if !loopback => out.push(
            "QUIC 256 B loopback targets (>= 300K events/s, >= 60 % of raw TCP): not judged on this path"
                .into(),
        ),
        Some(q) => {
            let pass = |ok: bool| if ok { "PASS" } else { "MISS" };
            out.push(format!(
                "QUIC 256 B >= 300K events/s: {} ({})",
                pass(q.events_per_s >= 300_000.0),
                rate(q.events_per_s)
            ));
            out.push(format!(
                "QUIC 256 B >= 60 % of raw TCP: {} ({:.0} %)",
                pass(q.ratio() >= 0.6),
                q.ratio() * 100.0
            ));
        }
        None => out.push("QUIC 256 B targets: not measured (no QUIC row)".into()),
    }
    for size in [256, 1024] {
        if let (Some(q), Some(g)) = (find(Transport::Quic, size), find(Transport::Grpc, size)) {
            out.push(format!(
                "QUIC ÷ gRPC, {}: {:.2}× events/s{}",
                label(size),
                q.events_per_s / g.events_per_s.max(1e-9),
                match (q.latency, g.latency) {
                    (Some(ql), Some(gl)) => format!(", p99 {:.1} vs {:.1} ms", ql.1, gl.1),
                    _ => String::new(),
                }
            ));
        }
    }
    out
}

/// The value at quantile `q` of sorted `v`.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i.min(v.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_rates() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 51.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert!(quantile(&[], 0.5).is_nan());
        assert_eq!(rate(312_400.0), "312.4K");
        assert_eq!(rate(2_500_000.0), "2.50M");
    }
}
