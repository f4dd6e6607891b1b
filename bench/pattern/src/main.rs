//! `pattern-bench`: EventBridge pattern matching throughput, events/s on one core with JSON
//! parsing included (the input is each event's JSON text), for outrider's `RuleSet`, the
//! `quamina` crate and a linear scan, on the same rules and events in the same run.
//!
//! Every matcher's answers are checked against the reference semantics (serde_json `Value` +
//! `Pattern::matches` per rule, which is also the linear scan) and disagreements are reported,
//! not averaged away. quamina runs in a child process (this binary with `--quamina-child`): the
//! release profile aborts on panic, so `catch_unwind` cannot contain a panic there; a child that
//! panics is reported with the rule or event it panicked on and rerun without it.
//!
//! ```sh
//! cargo run --release -p outrider-pattern-bench            # full run (~2-4 min)
//! cargo run --release -p outrider-pattern-bench -- --quick # shorter timings
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use outrider_runtime::pattern::{Pattern, RuleSet};
use serde_json::{json, Value};

const SIZES: [usize; 3] = [10, 1_000, 10_000];
const EVENTS: usize = 1_000;
/// Events whose answers are checked at 10,000 rules (all of them below), the reference being
/// slow there.
const CHECKED_AT_10K: usize = 300;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    ExactPrefix,
    Mixed,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::ExactPrefix => "exact/prefix",
            Kind::Mixed => "mixed",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "exact/prefix" => Some(Kind::ExactPrefix),
            "mixed" => Some(Kind::Mixed),
            _ => None,
        }
    }

    /// How many shapes of rules the set cycles through.
    fn shapes(self) -> usize {
        match self {
            Kind::ExactPrefix => 2,
            Kind::Mixed => 8,
        }
    }

    /// The label of rule `i`'s shape.
    fn shape(self, i: usize) -> &'static str {
        match self {
            Kind::ExactPrefix => ["exact source + detail-type", "prefix customer.id"][i % 2],
            Kind::Mixed => [
                "exact source + detail-type",
                "prefix customer.id",
                "numeric amount + exact currency",
                "anything-but status + equals-ignore-case region",
                "equals-ignore-case customer.id",
                "cidr ip + suffix source + exists:false note",
                "wildcard tier",
                "exact sku + numeric qty in items[] (array consistency)",
            ][i % 8],
        }
    }
}

/// Rule `i` of a set, as pattern text. Parameters repeat every 8 rules (2 for exact/prefix),
/// so every shape has matching rules at every size.
fn rule(kind: Kind, i: usize) -> String {
    let value = match kind {
        Kind::ExactPrefix => {
            let p = i / 2;
            match i % 2 {
                0 => json!({"source": [format!("app.{p}")], "detail-type": ["Order Placed"]}),
                _ => json!({"detail": {"customer": {"id": [{"prefix": format!("c-{p}-")}]}}}),
            }
        }
        Kind::Mixed => {
            let p = i / 8;
            match i % 8 {
                0 => json!({"source": [format!("app.{p}")], "detail-type": ["Order Placed"]}),
                1 => json!({"detail": {"customer": {"id": [{"prefix": format!("c-{p}-")}]}}}),
                2 => {
                    json!({"detail": {"amount": [{"numeric": [">", p, "<=", p + 10]}], "currency": ["EUR"]}})
                }
                3 => {
                    json!({"detail": {"status": [{"anything-but": [format!("s{p}"), format!("s{}", p + 1)]}],
                                       "region": [{"equals-ignore-case": format!("R{p}")}]}})
                }
                4 => {
                    json!({"detail": {"customer": {"id": [{"equals-ignore-case": format!("C-{p}-ABC")}]}}})
                }
                5 => {
                    json!({"detail": {"ip": [{"cidr": format!("10.{}.0.0/16", p % 256)}], "note": [{"exists": false}]},
                            "source": [{"suffix": format!(".{p}")}]})
                }
                6 => json!({"detail": {"customer": {"tier": [{"wildcard": format!("*old-{p}")}]}}}),
                _ => {
                    json!({"detail": {"items": {"sku": [format!("sku-{p}")], "qty": [{"numeric": [">=", 2]}]}}})
                }
            }
        }
    };
    value.to_string()
}

/// Event `e`: an EventBridge event of about 600 bytes whose values cycle over 64 parameters.
fn event(e: usize) -> Vec<u8> {
    let j = e % 64;
    let c = (j * 7) % 64;
    let mut detail = json!({
        "customer": {"id": if e.is_multiple_of(3) { format!("C-{c}-ABC") } else { format!("c-{c}-abc") },
                     "tier": format!("gold-{j}")},
        "amount": if e.is_multiple_of(4) { json!(j) } else { json!(j as f64 + 0.5) },
        "currency": "EUR",
        "status": format!("s{j}"),
        "region": if e.is_multiple_of(2) { format!("R{j}") } else { format!("r{j}") },
        "ip": format!("10.{j}.{}.7", e % 256),
        "message": "line 1\nline \"2\" \u{e9}",
        "items": [{"sku": format!("sku-{j}"), "qty": 1}, {"sku": format!("sku-{}", j + 1), "qty": 2}],
    });
    if e.is_multiple_of(7) {
        detail["note"] = json!("fragile");
    }
    json!({
        "version": "0",
        "id": format!("6a7e8feb-b491-4cf7-a9f1-bf3703{e:06}"),
        "detail-type": if e.is_multiple_of(5) { "Order Shipped" } else { "Order Placed" },
        "source": format!("app.{j}"),
        "account": "123456789012",
        "time": format!("2024-01-01T00:00:{:02}Z", e % 60),
        "region": "eu-west-1",
        "resources": [format!("arn:aws:x:eu-west-1:123456789012:thing/{e}")],
        "detail": detail,
    })
    .to_string()
    .into_bytes()
}

fn rules(kind: Kind, n: usize) -> Vec<String> {
    (0..n).map(|i| rule(kind, i)).collect()
}

fn events() -> Vec<Vec<u8>> {
    (0..EVENTS).map(event).collect()
}

fn checked(n: usize) -> usize {
    if n >= 10_000 {
        CHECKED_AT_10K
    } else {
        EVENTS
    }
}

fn rule_index(id: &str) -> Option<usize> {
    id.strip_prefix('r')?.parse().ok()
}

/// CPU ticks: the whole machine's busy time and this process's.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = cpu.iter().take(8).sum::<u64>() - cpu.get(3)? - cpu.get(4)?;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based, counting pid and comm).
    let own = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((busy, own))
}

/// This thread's CPU time in clock ticks (1/100 s).
fn thread_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A throughput figure.
#[derive(Clone, Copy)]
struct Timing {
    /// Events per second of this thread's CPU time: per core, whatever else ran.
    cpu: f64,
    /// Events per second of wall-clock time.
    wall: f64,
    /// Cores other processes kept busy meanwhile.
    other: f64,
}

impl Timing {
    const NONE: Timing = Timing {
        cpu: f64::NAN,
        wall: f64::NAN,
        other: f64::NAN,
    };
}

/// Runs `f` over the events, round after round, for at least `secs` (and at least `min_events`
/// events).
fn timed(events: &[Vec<u8>], secs: f64, min_events: usize, mut f: impl FnMut(&[u8])) -> Timing {
    let before = cpu_ticks();
    let thread_before = thread_ticks();
    let start = Instant::now();
    let mut done = 0usize;
    'outer: loop {
        for e in events {
            f(e);
            done += 1;
            if done.is_multiple_of(64)
                && done >= min_events
                && start.elapsed().as_secs_f64() >= secs
            {
                break 'outer;
            }
        }
        if done >= min_events && start.elapsed().as_secs_f64() >= secs {
            break;
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let other = match (before, cpu_ticks()) {
        (Some((b0, o0)), Some((b1, o1))) => {
            (b1.saturating_sub(b0) as f64 - o1.saturating_sub(o0) as f64).max(0.0) / 100.0 / wall
        }
        _ => f64::NAN,
    };
    let cpu = match (thread_before, thread_ticks()) {
        (Some(t0), Some(t1)) if t1 > t0 => done as f64 / ((t1 - t0) as f64 / 100.0),
        _ => f64::NAN,
    };
    Timing {
        cpu,
        wall: done as f64 / wall,
        other,
    }
}

#[derive(Default)]
struct Check {
    /// Events whose answer differs from the reference.
    events: usize,
    /// Disagreeing (rule, event) pairs per rule shape: (missed, extra).
    by_shape: BTreeMap<&'static str, (usize, usize)>,
    examples: Vec<String>,
}

fn compare(
    kind: Kind,
    rules: &[String],
    events: &[Vec<u8>],
    reference: &[Vec<usize>],
    answers: &BTreeMap<usize, Vec<usize>>,
) -> Check {
    let mut check = Check::default();
    for (&e, got) in answers {
        let Some(want) = reference.get(e) else {
            continue;
        };
        if got == want {
            continue;
        }
        check.events += 1;
        for &r in want.iter().filter(|r| !got.contains(r)) {
            check.by_shape.entry(kind.shape(r)).or_default().0 += 1;
            if check.examples.len() < 3 {
                check.examples.push(format!(
                    "missed r{r} {} on event {}",
                    rules.get(r).map_or("?", String::as_str),
                    String::from_utf8_lossy(events.get(e).map_or(&[][..], Vec::as_slice))
                ));
            }
        }
        for &r in got.iter().filter(|r| !want.contains(r)) {
            check.by_shape.entry(kind.shape(r)).or_default().1 += 1;
            if check.examples.len() < 3 {
                check.examples.push(format!(
                    "extra r{r} {} on event {}",
                    rules.get(r).map_or("?", String::as_str),
                    String::from_utf8_lossy(events.get(e).map_or(&[][..], Vec::as_slice))
                ));
            }
        }
    }
    check
}

struct QuaminaRun {
    timing: Timing,
    /// Rules quamina rejected or that were left out after a panic: not compared.
    excluded: Vec<usize>,
    answers: BTreeMap<usize, Vec<usize>>,
    rejected: Vec<String>,
    panics: Vec<String>,
    /// After panics on every event: the shape of rules left out to get a figure.
    without_shape: Option<usize>,
    failed: Option<String>,
}

/// Runs quamina in child processes, rerunning without the rule or event it panicked on.
fn run_quamina(kind: Kind, n: usize, secs: f64) -> QuaminaRun {
    let mut run = QuaminaRun {
        timing: Timing::NONE,
        excluded: Vec::new(),
        answers: BTreeMap::new(),
        rejected: Vec::new(),
        panics: Vec::new(),
        without_shape: None,
        failed: None,
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            run.failed = Some(format!("no executable path: {e}"));
            return run;
        }
    };
    let (mut skip_rules, mut skip_events): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    for _attempt in 0..40 {
        let mut skip = skip_rules.clone();
        if let Some(shape) = run.without_shape {
            skip.extend((0..n).filter(|i| i % kind.shapes() == shape));
        }
        let child = Command::new(&exe)
            .args([
                "--quamina-child",
                kind.name(),
                &n.to_string(),
                &secs.to_string(),
                &join(&skip),
                &join(&skip_events),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                run.failed = Some(format!("could not start the child: {e}"));
                return run;
            }
        };
        let mut panic = None;
        run.answers.clear();
        run.rejected.clear();
        run.excluded.clone_from(&skip);
        if let Some(out) = child.stdout.take() {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut parts = line.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("answers"), Some(e), rest) => {
                        if let Ok(e) = e.parse() {
                            let ids = rest
                                .unwrap_or("")
                                .split(',')
                                .filter_map(|s| s.parse().ok())
                                .collect();
                            run.answers.insert(e, ids);
                        }
                    }
                    (Some("rejected"), Some(r), rest) => {
                        run.rejected.push(format!("r{r}: {}", rest.unwrap_or("")));
                        run.excluded.extend(r.parse::<usize>().ok());
                    }
                    (Some("throughput"), Some(x), rest) => {
                        let mut rest = rest
                            .unwrap_or("")
                            .split(' ')
                            .map(|s| s.parse().unwrap_or(f64::NAN));
                        run.timing = Timing {
                            cpu: x.parse().unwrap_or(f64::NAN),
                            wall: rest.next().unwrap_or(f64::NAN),
                            other: rest.next().unwrap_or(f64::NAN),
                        };
                    }
                    (Some("PANIC"), Some(what), rest) => {
                        panic = Some((what.to_string(), rest.unwrap_or("").to_string()))
                    }
                    _ => {}
                }
            }
        }
        let status = child.wait();
        let Some((what, rest)) = panic else {
            if !status.as_ref().is_ok_and(|s| s.success()) {
                run.failed = Some(format!("child failed: {status:?}"));
            }
            return run;
        };
        let (index, message) = rest.split_once(' ').unwrap_or((rest.as_str(), ""));
        let Ok(index) = index.parse::<usize>() else {
            run.failed = Some(format!("child panicked: {what} {rest}"));
            return run;
        };
        if what == "add" {
            run.panics.push(format!(
                "add_pattern(r{index} {}) panicked: {message}",
                rule(kind, index)
            ));
            skip_rules.push(index);
        } else {
            run.panics.push(format!(
                "matches_for_event(event {index}) panicked: {message}"
            ));
            skip_events.push(index);
            if skip_events.len() >= 3 {
                // It panics on every event: find a shape of rules without which it does not
                // (last shapes first), and report the figure as such.
                let next = match run.without_shape {
                    None => kind.shapes().checked_sub(1),
                    Some(s) => s.checked_sub(1),
                };
                let Some(next) = next else {
                    run.failed =
                        Some("matches_for_event panicked on every event: no figure".into());
                    run.answers.clear();
                    return run;
                };
                run.without_shape = Some(next);
                skip_events.clear();
            }
        }
    }
    run.failed = Some("gave up after 40 panics".into());
    run
}

fn join(items: &[usize]) -> String {
    if items.is_empty() {
        return "-".into();
    }
    items
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn split(list: &str) -> Vec<usize> {
    list.split(',').filter_map(|s| s.parse().ok()).collect()
}

static CONTEXT: Mutex<String> = Mutex::new(String::new());

fn set_context(s: String) {
    if let Ok(mut c) = CONTEXT.lock() {
        *c = s;
    }
}

/// The child: builds quamina on the rules, prints its answers and its throughput. A panic
/// (caught where the build unwinds; under `panic = "abort"` the hook's line is all there is)
/// is printed as `PANIC add|match INDEX message`.
fn quamina_child(args: &[String]) -> Result<(), String> {
    let [kind, n, secs, skip_rules, skip_events] = args else {
        return Err("usage: --quamina-child KIND N SECS SKIP_RULES SKIP_EVENTS".into());
    };
    let kind = Kind::parse(kind).ok_or("unknown kind")?;
    let n: usize = n.parse().map_err(|_| "bad N")?;
    let secs: f64 = secs.parse().map_err(|_| "bad SECS")?;
    let (skip_rules, skip_events) = (split(skip_rules), split(skip_events));
    std::panic::set_hook(Box::new(|info| {
        let context = CONTEXT.lock().map(|c| c.clone()).unwrap_or_default();
        let message = info.to_string().replace('\n', " ");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "PANIC {context} {message}");
        let _ = out.flush();
    }));
    let mut out = std::io::stdout().lock();
    let mut q = quamina::Quamina::<String>::new();
    for (i, text) in rules(kind, n).iter().enumerate() {
        if skip_rules.contains(&i) {
            continue;
        }
        set_context(format!("add {i}"));
        match catch_unwind(AssertUnwindSafe(|| q.add_pattern(format!("r{i}"), text))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => writeln!(out, "rejected {i} {e}").map_err(|e| e.to_string())?,
            Err(_) => std::process::exit(101),
        }
    }
    let events: Vec<(usize, Vec<u8>)> = events()
        .into_iter()
        .enumerate()
        .filter(|(e, _)| !skip_events.contains(e))
        .collect();
    for (e, text) in events.iter().take(checked(n)) {
        set_context(format!("match {e}"));
        match catch_unwind(AssertUnwindSafe(|| q.matches_for_event(text))) {
            Ok(Ok(ids)) => {
                let mut ids: Vec<usize> = ids.iter().filter_map(|id| rule_index(id)).collect();
                ids.sort_unstable();
                ids.dedup();
                writeln!(out, "answers {e} {}", join(&ids).replace('-', ""))
                    .map_err(|e| e.to_string())?;
            }
            Ok(Err(err)) => writeln!(out, "error {e} {err}").map_err(|e| e.to_string())?,
            Err(_) => std::process::exit(101),
        }
    }
    set_context("match timed-loop".into());
    let texts: Vec<Vec<u8>> = events.into_iter().map(|(_, t)| t).collect();
    let mut hits = 0usize;
    let t = timed(&texts, secs, 1, |e| {
        hits += q.matches_for_event(e).map_or(0, |m| m.len());
    });
    writeln!(out, "throughput {} {} {}", t.cpu, t.wall, t.other).map_err(|e| e.to_string())?;
    writeln!(out, "hits {hits}").map_err(|e| e.to_string())?;
    Ok(())
}

struct Row {
    kind: Kind,
    n: usize,
    outrider: Timing,
    quamina: QuaminaRun,
    linear: Timing,
    checked: usize,
    outrider_check: Check,
    quamina_check: Check,
    matches_per_event: f64,
}

fn measure(kind: Kind, n: usize, events: &[Vec<u8>], secs: f64) -> Row {
    let texts = rules(kind, n);
    let patterns: Vec<(String, Pattern)> = texts
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((format!("r{i}"), Pattern::parse(t).ok()?)))
        .collect();
    assert_eq!(patterns.len(), n, "every generated rule parses");
    let mut set = RuleSet::new();
    for (id, p) in &patterns {
        set.add_rule(id.clone(), p.clone());
    }
    // The reference: the whole event parsed, each pattern alone.
    let checked = checked(n);
    let reference: Vec<Vec<usize>> = events
        .iter()
        .take(checked)
        .map(|e| {
            let v: Value = serde_json::from_slice(e).unwrap_or(Value::Null);
            (0..n).filter(|&i| patterns[i].1.matches(&v)).collect()
        })
        .collect();
    let matches_per_event =
        reference.iter().map(Vec::len).sum::<usize>() as f64 / reference.len().max(1) as f64;
    let outrider_answers: BTreeMap<usize, Vec<usize>> = events
        .iter()
        .take(checked)
        .enumerate()
        .map(|(e, text)| {
            let ids = set.matches_json_bytes(text).unwrap_or_default();
            (e, ids.iter().filter_map(|id| rule_index(id)).collect())
        })
        .collect();
    let outrider_check = compare(kind, &texts, events, &reference, &outrider_answers);
    let mut hits = 0usize;
    let outrider = timed(events, secs, 1, |e| {
        hits += set.matches_json_bytes(e).map_or(0, |m| m.len());
    });
    let linear = timed(events, secs.min(2.0), 20, |e| {
        let v: Value = serde_json::from_slice(e).unwrap_or(Value::Null);
        hits += patterns.iter().filter(|(_, p)| p.matches(&v)).count();
    });
    let quamina = run_quamina(kind, n, secs);
    // quamina is compared on the rules it took.
    let quamina_reference: Vec<Vec<usize>> = reference
        .iter()
        .map(|ids| {
            ids.iter()
                .copied()
                .filter(|i| !quamina.excluded.contains(i))
                .collect()
        })
        .collect();
    let quamina_check = compare(kind, &texts, events, &quamina_reference, &quamina.answers);
    eprintln!("  {} {n}: done ({hits} hits)", kind.name());
    Row {
        kind,
        n,
        outrider,
        quamina,
        linear,
        checked,
        outrider_check,
        quamina_check,
        matches_per_event,
    }
}

fn si(x: f64) -> String {
    if !x.is_finite() {
        "—".into()
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.0}K", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--quamina-child") {
        if let Err(e) = quamina_child(args.get(2..).unwrap_or(&[])) {
            eprintln!("{e}");
            std::process::exit(2);
        }
        return;
    }
    if args.get(1).map(String::as_str) == Some("--only-outrider") {
        // For profilers: `--only-outrider KIND N SECS` times outrider's RuleSet alone.
        let kind = args
            .get(2)
            .and_then(|k| Kind::parse(k))
            .unwrap_or(Kind::ExactPrefix);
        let n = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1_000);
        let secs = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(5.0);
        let mut set = RuleSet::new();
        for (i, text) in rules(kind, n).iter().enumerate() {
            if let Err(e) = set.add_rule_json(format!("r{i}"), text) {
                eprintln!("r{i}: {e}");
            }
        }
        let events = events();
        let mut hits = 0usize;
        let t = timed(&events, secs, 1, |e| {
            hits += set.matches_json_bytes(e).map_or(0, |m| m.len());
        });
        println!(
            "{} × {n}: {} events/s per core, {} wall ({hits} hits, other processes {:.2} cores)",
            kind.name(),
            si(t.cpu),
            si(t.wall),
            t.other
        );
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let secs = if quick { 0.3 } else { 2.0 };
    let events = events();
    let avg = events.iter().map(Vec::len).sum::<usize>() as f64 / events.len() as f64;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "pattern-bench: {} events of {avg:.0} B on average, {secs} s per figure, one thread; load average at start: {}",
        events.len(),
        load.trim()
    );
    let parse = timed(&events, secs, 1, |e| {
        let v: Value = serde_json::from_slice(e).unwrap_or(Value::Null);
        std::hint::black_box(v);
    });
    println!(
        "serde_json::from_slice::<Value> alone: {} events/s per core, {} wall (other processes: {:.2} cores)",
        si(parse.cpu),
        si(parse.wall),
        parse.other
    );
    let mut rows = Vec::new();
    for kind in [Kind::ExactPrefix, Kind::Mixed] {
        for n in SIZES {
            rows.push(measure(kind, n, &events, secs));
        }
    }
    println!();
    println!("| rules | count | matches/event | outrider | quamina | linear scan | outrider ÷ quamina | outrider ÷ linear | wrong answers: outrider / quamina (events checked) | other processes, cores (outrider / quamina / linear) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        let q = r.quamina.timing;
        let ratio = |a: f64, b: f64| {
            if a.is_finite() && b.is_finite() && b > 0.0 {
                format!("{:.1}×", a / b)
            } else {
                "—".into()
            }
        };
        let mut q_note = String::new();
        if !r.quamina.rejected.is_empty() {
            q_note += &format!(" ({} rules rejected)", r.quamina.rejected.len());
        }
        if !r.quamina.panics.is_empty() {
            q_note += &format!(" ({} panics, rerun without)", r.quamina.panics.len());
        }
        if let Some(shape) = r.quamina.without_shape {
            q_note += &format!(
                " (without the {} rules: {})",
                r.n / r.kind.shapes(),
                r.kind.shape(shape)
            );
        }
        println!(
            "| {} | {} | {:.1} | {} ({}) | {} ({}){} | {} ({}) | {} | {} | {} / {} ({}) | {:.2} / {:.2} / {:.2} |",
            r.kind.name(),
            r.n,
            r.matches_per_event,
            si(r.outrider.cpu),
            si(r.outrider.wall),
            si(q.cpu),
            si(q.wall),
            q_note,
            si(r.linear.cpu),
            si(r.linear.wall),
            ratio(r.outrider.cpu, q.cpu),
            ratio(r.outrider.cpu, r.linear.cpu),
            r.outrider_check.events,
            r.quamina_check.events,
            r.checked,
            r.outrider.other,
            q.other,
            r.linear.other,
        );
    }
    println!();
    println!("events/s per core: events ÷ the matching thread's CPU time; in parentheses: ÷ wall-clock time.");
    println!();
    for r in &rows {
        let label = format!("{} × {}", r.kind.name(), r.n);
        for (who, check) in [
            ("outrider", &r.outrider_check),
            ("quamina", &r.quamina_check),
        ] {
            if check.events == 0 {
                continue;
            }
            println!(
                "{label}: {who} disagrees with the reference on {} of {} events",
                check.events, r.checked
            );
            for (shape, (missed, extra)) in &check.by_shape {
                println!("    {shape}: {missed} matches missed, {extra} extra");
            }
            for ex in &check.examples {
                println!("    e.g. {ex}");
            }
        }
        for p in r.quamina.panics.iter().take(3) {
            println!("{label}: quamina {p}");
        }
        if r.quamina.panics.len() > 3 {
            println!(
                "{label}: quamina panicked {} times in all",
                r.quamina.panics.len()
            );
        }
        if let Some(shape) = r.quamina.without_shape {
            println!(
                "{label}: quamina panicked on every event; its figure and answers are without the rules of shape \"{}\"",
                r.kind.shape(shape)
            );
        }
        for rj in r.quamina.rejected.iter().take(2) {
            println!("{label}: quamina rejected {rj}");
        }
        let mut rejected_shapes: BTreeMap<&str, usize> = BTreeMap::new();
        for rj in &r.quamina.rejected {
            if let Some(i) = rj.split(':').next().and_then(rule_index) {
                *rejected_shapes.entry(r.kind.shape(i)).or_default() += 1;
            }
        }
        for (shape, count) in rejected_shapes {
            println!("{label}: quamina rejected {count} rules of shape \"{shape}\"");
        }
        if let Some(f) = &r.quamina.failed {
            println!("{label}: quamina run failed: {f}");
        }
    }
    let failed = rows.iter().any(|r| r.outrider_check.events > 0);
    if failed {
        println!("outrider's RuleSet disagreed with the reference semantics");
        std::process::exit(1);
    }
}
