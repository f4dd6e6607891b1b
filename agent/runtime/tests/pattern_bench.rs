//! A rough throughput check of `RuleSet` (ignored by default; run in release):
//! `cargo test --release -p outrider-runtime --test pattern_bench -- --ignored --nocapture`.
//! Events are parsed from JSON text in the loop, as they would arrive, and match the same few
//! rules whatever the rule count, so the figures show the cost of the rules that do not match. BENCHMARKS.md's comparison
//! with the `quamina` crate is still to do.

use std::time::Instant;

use outrider_runtime::pattern::{Pattern, RuleSet};
use serde_json::{json, Value};

fn rules(n: usize, mixed: bool) -> Vec<(String, Pattern)> {
    (0..n)
        .map(|i| {
            let p = match (mixed, i % 4) {
                (_, 0) | (false, 2) => json!({"source": [format!("app.{i}")], "detail-type": ["Order Placed"]}),
                (_, 1) | (false, 3) => json!({"detail": {"customer": {"id": [{"prefix": format!("c-{i}-")}]}}}),
                (true, 2) => json!({"detail": {"amount": [{"numeric": [">", i, "<=", i + 10]}], "currency": ["EUR"]}}),
                _ => json!({"detail": {"status": [{"anything-but": ["s{i}"]}], "region": [{"equals-ignore-case": format!("R{i}")}]}}),
            };
            (format!("r{i}"), Pattern::from_value(&p).unwrap())
        })
        .collect()
}

fn events(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            json!({
                "version": "0", "id": format!("id-{i}"), "source": format!("app.{}", i % 16),
                "detail-type": "Order Placed", "account": "123456789012", "time": "2024-01-01T00:00:00Z",
                "region": "eu-west-1", "resources": ["arn:aws:x:eu-west-1:1:thing/1"],
                "detail": {"customer": {"id": format!("c-{}-abc", (i * 7) % 16), "tier": "gold"},
                           "amount": (i % 16) as f64 + 0.5, "currency": "EUR", "status": format!("s{}", i % 16),
                           "region": format!("r{}", i % 16), "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}]}
            })
            .to_string()
        })
        .collect()
}

fn run(label: &str, n: usize, mixed: bool) {
    let rules = rules(n, mixed);
    let mut set = RuleSet::new();
    for (id, p) in &rules {
        set.add_rule(id.clone(), p.clone());
    }
    let evs = events(2000);
    // Correctness first: the index answers as the linear scan does.
    for e in evs.iter().take(200) {
        let v: Value = serde_json::from_str(e).unwrap();
        let linear: Vec<String> = rules
            .iter()
            .filter(|(_, p)| p.matches(&v))
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(set.matching_rules(&v), linear);
    }
    let rounds = 25;
    let start = Instant::now();
    let mut hits = 0usize;
    for _ in 0..rounds {
        for e in &evs {
            hits += set.matching_rules_json(e).unwrap().len();
        }
    }
    let per_s = (rounds * evs.len()) as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for e in &evs[..200] {
        let v: Value = serde_json::from_str(e).unwrap();
        hits += rules.iter().filter(|(_, p)| p.matches(&v)).count();
    }
    let linear_per_s = 200.0 / start.elapsed().as_secs_f64();
    eprintln!("{label:>14} {n:>6} rules: RuleSet {per_s:>10.0} events/s, linear scan {linear_per_s:>10.0} events/s ({hits} hits)");
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn throughput() {
    let evs = events(2000);
    let start = Instant::now();
    let mut fields = 0usize;
    for _ in 0..25 {
        for e in &evs {
            let v: Value = serde_json::from_str(e).unwrap();
            fields += v.as_object().map_or(0, |o| o.len());
        }
    }
    let per_s = (25 * evs.len()) as f64 / start.elapsed().as_secs_f64();
    eprintln!("JSON parsing alone: {per_s:.0} events/s ({fields} fields)");
    for n in [10, 1_000, 10_000] {
        run("exact/prefix", n, false);
    }
    for n in [10, 1_000, 10_000] {
        run("mixed", n, true);
    }
}
