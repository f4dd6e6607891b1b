//! Append and replay throughput of the Outrider log, against baselines run in the same process on
//! the same filesystem: a plain append-only file and raw sled.
//!
//! ```text
//! cargo bench -p outrider-runtime --bench append -- [--quick] [--secs S] [--runs N]
//!     [--filter SUBSTR] [--system outrider|plain|sled] [--no-replay] [--replay-only]
//! ```
//!
//! * Every append row runs the three systems interleaved (outrider, plain file, raw sled), each
//!   run on a fresh directory: a warm-up (0.4 s), then a fixed measuring window (`--secs`, default
//!   1 s), counting only the events completed inside it; the table shows the median of `--runs`
//!   runs (default 3). `--quick` is 1 run of 1 s (about 45 s in all); the default takes about
//!   2.5 minutes on 2 cores, and `--secs 3` about 5. Progress and every sample go to stderr, the
//!   Markdown tables to stdout.
//! * Writers are OS threads; each owns a stream (`bench-<n>`) and appends batches of 64 events (1
//!   in the single-event rows) with `ExpectedVersion::Any`, cloning the events for every call (as a
//!   client would). Row ids for `--filter` look like `sync/1024/8w/b64` or `periodic/256/1w/b64`.
//!   Event ids are left empty, so the runtime assigns them (UUIDv7), as for producers that give none.
//! * Baselines write pre-encoded bytes of the same size as the runtime's encoded events: they are
//!   ceilings, not equivalent work (no validation, encoding, indexing or checksums).
//! * The scratch directory is `<target>/bench-tmp/append-<pid>`, removed at the end.
//! * Diagnostics per row (second table): commit-group size and `sync()` time from the log's
//!   metrics, CPU use of the process and of the committer thread, CPU used by other processes
//!   (a shared machine skews everything), and bytes written per byte of events.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use outrider_runtime::{Durability, Event, ExpectedVersion, Log, LogConfig};
use prost::Message;

const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Events per append call in the batched rows.
const BATCH: usize = 64;
/// Same sled settings as the runtime (see `recover::sled_open` and `LogConfig::new`).
const SLED_CACHE: u64 = 4 * 1024 * 1024;
const SLED_SEGMENT: usize = 1 << 20;
/// Events per `read_all` call during replay.
const READ_PAGE: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Options

struct Opts {
    quick: bool,
    secs: f64,
    warmup: f64,
    runs: usize,
    filter: Option<String>,
    system: Option<System>,
    append: bool,
    replay: bool,
}

impl Opts {
    fn parse() -> Self {
        let mut o = Opts {
            quick: false,
            secs: 1.0,
            warmup: 0.4,
            runs: 3,
            filter: None,
            system: None,
            append: true,
            replay: true,
        };
        let mut secs = None;
        let mut runs = None;
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut val = |name: &str| {
                args.next()
                    .unwrap_or_else(|| panic!("{name} needs a value"))
            };
            match a.as_str() {
                "--quick" => o.quick = true,
                "--secs" => secs = Some(val("--secs").parse().expect("--secs: a number")),
                "--runs" => runs = Some(val("--runs").parse().expect("--runs: an integer")),
                "--filter" => o.filter = Some(val("--filter")),
                "--system" => {
                    o.system = Some(match val("--system").as_str() {
                        "outrider" => System::Outrider,
                        "plain" => System::Plain,
                        "sled" => System::Sled,
                        s => panic!("--system: unknown system {s:?}"),
                    })
                }
                "--no-replay" => o.replay = false,
                "--replay-only" => o.append = false,
                // `cargo bench` passes `--bench`; ignore it and any other harness flag.
                _ => {}
            }
        }
        if o.quick {
            o.runs = 1;
            o.warmup = 0.25;
        }
        o.secs = secs.unwrap_or(o.secs);
        o.runs = runs.unwrap_or(o.runs).max(1);
        o
    }
}

// ---------------------------------------------------------------------------------------------
// Events

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Outrider,
    Plain,
    Sled,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Outrider => "outrider",
            System::Plain => "plain",
            System::Sled => "sled",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Sync,
    Periodic,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Periodic => "periodic",
        }
    }
}

/// An event of about `target` encoded bytes.
struct Payload {
    target: usize,
    /// What a client hands to `append`: no id, no placement.
    client: Event,
    /// A fully placed event as the runtime stores it (id, stream, version, position, origin,
    /// time), encoded: the bytes the baselines write.
    encoded: Vec<u8>,
}

fn detail_with_pad(pad: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let pad: String = (0..pad)
        .map(|i| char::from(ALPHABET[i % ALPHABET.len()]))
        .collect();
    format!(r#"{{"device":"plc-07","metric":"temperature","value":21.5,"unit":"C","pad":"{pad}"}}"#)
}

fn client_event(detail: String) -> Event {
    Event {
        source: "com.example.gateway".into(),
        detail_type: "SensorReading".into(),
        detail,
        ..Default::default()
    }
}

/// The event as the committer places it (field sizes typical of a log of a few million events).
fn placed_event(detail: String) -> Event {
    Event {
        id: "01936f5e-2b7c-7d3a-9b1e-3f2a1c4d5e6f".into(),
        stream: "bench-0".into(),
        version: 1_000_000,
        position: 1_000_000,
        origin_node: "local".into(),
        origin_seq: 1_000_000,
        time_seconds: 1_790_000_000,
        time_nanos: 123_456_789,
        ..client_event(detail)
    }
}

impl Payload {
    fn new(target: usize) -> Self {
        let len = |pad| placed_event(detail_with_pad(pad)).encoded_len();
        let mut pad = target.saturating_sub(len(0));
        for _ in 0..8 {
            let l = len(pad);
            if l == target {
                break;
            }
            pad = if l > target {
                pad.saturating_sub(l - target)
            } else {
                pad + (target - l)
            };
        }
        let detail = detail_with_pad(pad);
        Payload {
            target,
            client: client_event(detail.clone()),
            encoded: placed_event(detail).encode_to_vec(),
        }
    }

    fn label(&self) -> String {
        if self.target.is_multiple_of(1024) {
            format!("{} KiB", self.target / 1024)
        } else {
            format!("{} B", self.target)
        }
    }

    /// `batch` events framed as in the plain file: u32 LE length, then the encoded event.
    fn framed(&self, batch: usize) -> Vec<u8> {
        let mut buf = Vec::with_capacity(batch * (4 + self.encoded.len()));
        for _ in 0..batch {
            buf.extend_from_slice(&(self.encoded.len() as u32).to_le_bytes());
            buf.extend_from_slice(&self.encoded);
        }
        buf
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// Runs `writers` threads, each calling its worker (which returns the events it made durable or
/// visible) until stopped; counts the events completed in the window after the warm-up.
fn drive<F>(writers: usize, warmup: Duration, window: Duration, make: impl Fn(usize) -> F) -> Drove
where
    F: FnMut() -> u64 + Send,
{
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let (start, wchar0) = (Instant::now(), wchar());
    let (rate, cpu) = std::thread::scope(|s| {
        for w in 0..writers {
            let mut work = make(w);
            let (stop, done) = (&stop, &done);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = work();
                    done.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(warmup);
        let (c0, t0, cpu0, m0) = (
            done.load(Ordering::Relaxed),
            Instant::now(),
            cpu_seconds(),
            machine_busy_seconds(),
        );
        std::thread::sleep(window);
        let (c1, t1, cpu1, m1) = (
            done.load(Ordering::Relaxed),
            Instant::now(),
            cpu_seconds(),
            machine_busy_seconds(),
        );
        stop.store(true, Ordering::Relaxed);
        let secs = (t1 - t0).as_secs_f64();
        let process = (cpu1.0 - cpu0.0) / secs;
        (
            (c1 - c0) as f64 / secs,
            (
                process,
                (cpu1.1 - cpu0.1) / secs,
                ((m1 - m0) / secs - process).max(0.0),
            ),
        )
    });
    // All writers have stopped: the totals include the warm-up and the calls in flight at the end.
    Drove {
        rate,
        events: done.load(Ordering::Relaxed),
        wchar: wchar() - wchar0,
        elapsed: start.elapsed().as_secs_f64(),
        cpu,
    }
}

/// CPU seconds used so far by (the whole process, the thread named `outrider-commit`), from
/// /proc (utime + stime, in clock ticks of 1/100 s).
fn cpu_seconds() -> (f64, f64) {
    fn ticks(stat: &str) -> Option<f64> {
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
    }
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let process = read(Path::new("/proc/self/stat"))
        .as_deref()
        .and_then(ticks)
        .unwrap_or(0.0);
    let mut committer = 0.0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if read(&t.path().join("comm")).is_some_and(|c| c.trim() == "outrider-commit") {
                committer += read(&t.path().join("stat"))
                    .as_deref()
                    .and_then(ticks)
                    .unwrap_or(0.0);
            }
        }
    }
    (process / 100.0, committer / 100.0)
}

/// CPU seconds the whole machine has been busy (user, nice, system, irq, softirq, steal), from
/// /proc/stat.
fn machine_busy_seconds() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.strip_prefix("cpu ")?.to_string();
            let f: Vec<f64> = line
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            Some(
                [0, 1, 2, 5, 6, 7]
                    .iter()
                    .filter_map(|&i| f.get(i))
                    .sum::<f64>()
                    / 100.0,
            )
        })
        .unwrap_or(0.0)
}

/// What one `drive` did.
struct Drove {
    /// Events/s in the measuring window.
    rate: f64,
    /// Events completed in the whole run (warm-up included).
    events: u64,
    /// Bytes this process handed to write()/pwrite() during the run (`wchar` of /proc/self/io).
    wchar: u64,
    elapsed: f64,
    /// Cores busy during the window: (whole process, outrider's committer thread, everything
    /// else on the machine).
    cpu: (f64, f64, f64),
}

/// `wchar` of /proc/self/io: bytes passed to write-like system calls by the whole process.
fn wchar() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

struct Timing {
    warmup: Duration,
    window: Duration,
}

/// One run of an append configuration.
struct Sample {
    rate: f64,
    /// Encoded bytes per event.
    bytes: f64,
    /// Bytes written (write/pwrite calls) per byte of events.
    write_amp: f64,
    /// Outrider only: (events per commit group, fsyncs/s, mean sync() ms, share of the run in sync()).
    commit: Option<(f64, f64, f64, f64)>,
    /// Cores busy in the window: whole process, committer thread, rest of the machine.
    cpu: (f64, f64, f64),
}

impl Sample {
    fn of(d: &Drove, bytes: f64) -> Self {
        Sample {
            rate: d.rate,
            bytes,
            write_amp: d.wchar as f64 / (d.events as f64 * bytes).max(1.0),
            commit: None,
            cpu: d.cpu,
        }
    }
}

fn run_append(
    sys: System,
    dir: &Path,
    mode: Mode,
    writers: usize,
    batch: usize,
    p: &Payload,
    t: &Timing,
) -> Sample {
    match sys {
        System::Outrider => run_outrider(dir, mode, writers, batch, p, t),
        System::Plain => Sample::of(
            &run_plain(dir, mode, writers, batch, p, t),
            p.encoded.len() as f64,
        ),
        System::Sled => Sample::of(
            &run_sled(dir, mode, writers, batch, p, t),
            p.encoded.len() as f64,
        ),
    }
}

fn log_config(dir: &Path, mode: Mode) -> LogConfig {
    let mut cfg = LogConfig::new(dir);
    cfg.durability = match mode {
        Mode::Sync => Durability::Sync,
        Mode::Periodic => Durability::Periodic {
            interval: FLUSH_INTERVAL,
        },
    };
    cfg
}

fn run_outrider(
    dir: &Path,
    mode: Mode,
    writers: usize,
    batch: usize,
    p: &Payload,
    t: &Timing,
) -> Sample {
    let (log, _) = Log::open(log_config(dir, mode)).expect("open the log");
    let d = drive(writers, t.warmup, t.window, |w| {
        let log = &log;
        let stream = format!("bench-{w}");
        let ev = &p.client;
        move || {
            let events = vec![ev.clone(); batch];
            log.append(&stream, ExpectedVersion::Any, events, None)
                .expect("append");
            batch as u64
        }
    });
    let m = log.metrics();
    let events = m.events_appended.load(Ordering::Relaxed);
    let bytes = m.bytes_appended.load(Ordering::Relaxed) as f64 / events.max(1) as f64;
    let groups = m.commit_groups.load(Ordering::Relaxed);
    let fs = m.fsync_seconds.snapshot();
    let mut s = Sample::of(&d, bytes);
    s.commit = Some((
        events as f64 / groups.max(1) as f64,
        fs.count as f64 / d.elapsed,
        1e3 * fs.sum_seconds / fs.count.max(1) as f64,
        fs.sum_seconds / d.elapsed,
    ));
    log.close().expect("close the log");
    s
}

/// Group commit over a plain file: writers queue their bytes; whoever finds no flush in progress
/// becomes the leader, writes everything queued so far with one write() and fdatasyncs once.
struct GroupFile {
    file: File,
    st: Mutex<GroupState>,
    cv: Condvar,
}

#[derive(Default)]
struct GroupState {
    queued: Vec<u8>,
    spare: Vec<u8>,
    enqueued: u64,
    durable: u64,
    leader: bool,
}

impl GroupFile {
    fn commit(&self, data: &[u8]) {
        let mut st = self.st.lock().unwrap();
        st.queued.extend_from_slice(data);
        st.enqueued += 1;
        let me = st.enqueued;
        while st.durable < me {
            if st.leader {
                st = self.cv.wait(st).unwrap();
                continue;
            }
            st.leader = true;
            let upto = st.enqueued;
            let spare = std::mem::take(&mut st.spare);
            let mut buf = std::mem::replace(&mut st.queued, spare);
            drop(st);
            (&self.file).write_all(&buf).expect("write");
            self.file.sync_data().expect("fdatasync");
            buf.clear();
            st = self.st.lock().unwrap();
            st.spare = buf;
            st.durable = upto;
            st.leader = false;
            self.cv.notify_all();
        }
    }
}

fn run_plain(
    dir: &Path,
    mode: Mode,
    writers: usize,
    batch: usize,
    p: &Payload,
    t: &Timing,
) -> Drove {
    std::fs::create_dir_all(dir).unwrap();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .expect("create the plain file");
    match mode {
        Mode::Sync => {
            let g = GroupFile {
                file,
                st: Mutex::new(GroupState::default()),
                cv: Condvar::new(),
            };
            drive(writers, t.warmup, t.window, |_| {
                let (g, bytes) = (&g, p.framed(batch));
                move || {
                    g.commit(&bytes);
                    batch as u64
                }
            })
        }
        Mode::Periodic => {
            let stop = AtomicBool::new(false);
            std::thread::scope(|s| {
                let (file, stop) = (&file, &stop);
                s.spawn(move || {
                    let mut last = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(5));
                        if last.elapsed() >= FLUSH_INTERVAL {
                            file.sync_data().expect("fdatasync");
                            last = Instant::now();
                        }
                    }
                });
                let d = drive(writers, t.warmup, t.window, |_| {
                    let bytes = p.framed(batch);
                    move || {
                        // O_APPEND: each write() lands whole at the end of the file.
                        (&*file).write_all(&bytes).expect("write");
                        batch as u64
                    }
                });
                stop.store(true, Ordering::Relaxed);
                d
            })
        }
    }
}

fn sled_open(dir: &Path) -> sled::Db {
    sled::Config::new()
        .path(dir)
        .cache_capacity(SLED_CACHE)
        .segment_size(SLED_SEGMENT)
        .flush_every_ms(None)
        .open()
        .expect("open sled")
}

fn run_sled(
    dir: &Path,
    mode: Mode,
    writers: usize,
    batch: usize,
    p: &Payload,
    t: &Timing,
) -> Drove {
    let db = sled_open(dir);
    let db_file = File::open(dir.join("db")).expect("open sled's db file");
    let next = AtomicU64::new(0);
    let d = drive(writers, t.warmup, t.window, |_| {
        let (db, db_file, next, value) = (&db, &db_file, &next, &p.encoded[..]);
        move || {
            let first = next.fetch_add(batch as u64, Ordering::Relaxed);
            for k in first..first + batch as u64 {
                db.insert(k.to_be_bytes(), value).expect("sled insert");
            }
            if mode == Mode::Sync {
                db.flush().expect("sled flush");
                db_file.sync_data().expect("fdatasync");
            }
            batch as u64
        }
    });
    drop(db);
    d
}

// ---------------------------------------------------------------------------------------------
// Replay

struct ReplayResult {
    events: u64,
    outrider: f64,
    outrider_bytes: f64,
    plain: f64,
    plain_raw: f64,
    sled: f64,
    sled_raw: f64,
}

fn fill_replay(root: &Path, p: &Payload, n: u64) -> f64 {
    // Outrider: one writer, batches of BATCH, periodic flush, closed (flushed) at the end.
    let (log, _) = Log::open(log_config(&root.join("outrider"), Mode::Periodic)).expect("open");
    let mut left = n;
    while left > 0 {
        let b = left.min(BATCH as u64) as usize;
        log.append(
            "replay",
            ExpectedVersion::Any,
            vec![p.client.clone(); b],
            None,
        )
        .expect("append");
        left -= b as u64;
    }
    let m = log.metrics();
    let bytes = m.bytes_appended.load(Ordering::Relaxed) as f64
        / m.events_appended.load(Ordering::Relaxed).max(1) as f64;
    log.close().expect("close");

    let plain = root.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let f = File::create(plain.join("log")).unwrap();
    let mut w = BufWriter::with_capacity(1 << 20, &f);
    let frames = p.framed(BATCH);
    let frame = 4 + p.encoded.len();
    let mut left = n as usize;
    while left > 0 {
        let b = left.min(BATCH);
        w.write_all(&frames[..b * frame]).unwrap();
        left -= b;
    }
    w.flush().unwrap();
    drop(w);
    f.sync_data().unwrap();

    let db = sled_open(&root.join("sled"));
    for k in 0..n {
        db.insert(k.to_be_bytes(), &p.encoded[..]).unwrap();
    }
    db.flush().unwrap();
    bytes
}

fn replay_outrider(dir: &Path) -> (u64, f64) {
    let (log, _) = Log::open(log_config(dir, Mode::Periodic)).expect("reopen");
    let t = Instant::now();
    let (mut from, mut n) = (0u64, 0u64);
    loop {
        let page = log.read_all(from, READ_PAGE).expect("read_all");
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        n += page.len() as u64;
        black_box(page);
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    log.close().unwrap();
    (n, rate)
}

fn replay_plain(dir: &Path, decode: bool) -> (u64, f64) {
    let t = Instant::now();
    let mut r = BufReader::with_capacity(1 << 20, File::open(dir.join("log")).unwrap());
    let (mut n, mut buf, mut len) = (0u64, Vec::new(), [0u8; 4]);
    loop {
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("read: {e}"),
        }
        buf.resize(u32::from_le_bytes(len) as usize, 0);
        r.read_exact(&mut buf).unwrap();
        if decode {
            black_box(Event::decode(&buf[..]).unwrap());
        } else {
            black_box(&buf);
        }
        n += 1;
    }
    (n, n as f64 / t.elapsed().as_secs_f64())
}

fn replay_sled(dir: &Path, decode: bool) -> (u64, f64) {
    let db = sled_open(dir);
    let t = Instant::now();
    let mut n = 0u64;
    for kv in db.iter() {
        let (_, v) = kv.unwrap();
        if decode {
            black_box(Event::decode(&v[..]).unwrap());
        } else {
            black_box(v);
        }
        n += 1;
    }
    (n, n as f64 / t.elapsed().as_secs_f64())
}

fn run_replay(root: &Path, p: &Payload, n: u64, runs: usize) -> ReplayResult {
    eprintln!("replay {}: writing {n} events to each system", p.label());
    let outrider_bytes = fill_replay(root, p, n);
    let (mut o, mut pl, mut plr, mut s, mut sr) = (vec![], vec![], vec![], vec![], vec![]);
    let check = |what: &str, got: u64| assert_eq!(got, n, "{what} replayed {got} of {n} events");
    for run in 0..runs {
        let (k, r) = replay_outrider(&root.join("outrider"));
        check("outrider", k);
        o.push(r);
        let (k, r) = replay_plain(&root.join("plain"), true);
        check("plain", k);
        pl.push(r);
        plr.push(replay_plain(&root.join("plain"), false).1);
        let (k, r) = replay_sled(&root.join("sled"), true);
        check("sled", k);
        s.push(r);
        sr.push(replay_sled(&root.join("sled"), false).1);
        eprintln!(
            "  run {}: outrider {} ev/s, plain {} ev/s ({} raw), sled {} ev/s ({} raw)",
            run + 1,
            fmt_rate(o[run]),
            fmt_rate(pl[run]),
            fmt_rate(plr[run]),
            fmt_rate(s[run]),
            fmt_rate(sr[run])
        );
    }
    let _ = std::fs::remove_dir_all(root);
    ReplayResult {
        events: n,
        outrider: median(o),
        outrider_bytes,
        plain: median(pl),
        plain_raw: median(plr),
        sled: median(s),
        sled_raw: median(sr),
    }
}

// ---------------------------------------------------------------------------------------------
// Reporting

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt_rate(r: f64) -> String {
    if !r.is_finite() {
        "–".into()
    } else if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}K", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn fmt_mb(events: f64, bytes: f64) -> String {
    if events.is_finite() {
        format!("{:.1}", events * bytes / 1e6)
    } else {
        "–".into()
    }
}

fn fmt_ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

/// Where `dir` is mounted: (mount point, device, fstype, options) from /proc/mounts.
fn mount_of(dir: &Path) -> Option<(String, String, String, String)> {
    let dir = dir.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| {
                (
                    f[1].to_string(),
                    f[0].to_string(),
                    f[2].to_string(),
                    f[3].to_string(),
                )
            })
        })
        .filter(|(mp, ..)| dir.starts_with(mp))
        .max_by_key(|(mp, ..)| mp.len())
}

fn machine_line(tmp: &Path) -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |s| s.trim().to_string());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let fs = mount_of(tmp).map_or_else(
        || "?".into(),
        |(mp, dev, ty, opts)| format!("{ty} on {dev} (mounted at {mp}, {opts})"),
    );
    let same = match (std::fs::metadata(tmp), std::fs::metadata("/work")) {
        (Ok(a), Ok(b)) => {
            if a.dev() == b.dev() {
                "yes"
            } else {
                "NO"
            }
        }
        _ => "unknown",
    };
    format!(
        "Machine: nproc {nproc} ({cpu}), kernel {kernel}; scratch dir {} is {fs}; same filesystem as /work: {same}.",
        tmp.display()
    )
}

/// `<target>/bench-tmp/append-<pid>`: the bench binary lives in `<target>/<profile>/deps/`.
fn scratch_root() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target
        .join("bench-tmp")
        .join(format!("append-{}", std::process::id()))
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent); // only if empty
        }
    }
}

struct RowSpec {
    mode: Mode,
    size: usize,
    writers: usize,
    batch: usize,
}

impl RowSpec {
    fn id(&self) -> String {
        format!(
            "{}/{}/{}w/b{}",
            self.mode.name(),
            self.size,
            self.writers,
            self.batch
        )
    }
}

#[derive(Default)]
struct RowResult {
    rate: [f64; 3],
    bytes: [f64; 3],
    amp: [f64; 3],
    cpu: [f64; 3],
    commit_cpu: f64,
    /// Highest median, over the three systems, of the cores other processes kept busy.
    others: f64,
    commit: Option<(f64, f64, f64, f64)>,
}

fn main() {
    let opts = Opts::parse();
    let root = scratch_root();
    std::fs::create_dir_all(&root).expect("create the scratch dir");
    let _cleanup = Cleanup(root.clone());
    let header = machine_line(&root);
    eprintln!("{header}");
    let timing = Timing {
        warmup: Duration::from_secs_f64(opts.warmup),
        window: Duration::from_secs_f64(opts.secs),
    };
    let payloads = [Payload::new(256), Payload::new(1024)];
    let payload = |size: usize| payloads.iter().find(|p| p.target == size).unwrap();
    let started = Instant::now();

    let mut rows = Vec::new();
    for mode in [Mode::Sync, Mode::Periodic] {
        for size in [256, 1024] {
            for writers in [1, 8] {
                rows.push(RowSpec {
                    mode,
                    size,
                    writers,
                    batch: BATCH,
                });
            }
            if mode == Mode::Sync {
                rows.push(RowSpec {
                    mode,
                    size,
                    writers: 8,
                    batch: 1,
                });
            }
        }
    }
    let systems = [System::Outrider, System::Plain, System::Sled];
    let mut results: Vec<(RowSpec, RowResult)> = Vec::new();
    if opts.append {
        for spec in rows {
            if opts
                .filter
                .as_ref()
                .is_some_and(|f| !spec.id().contains(f.as_str()))
            {
                continue;
            }
            let p = payload(spec.size);
            let mut samples: [Vec<Sample>; 3] = Default::default();
            for run in 0..opts.runs {
                for (i, &sys) in systems.iter().enumerate() {
                    if opts.system.is_some_and(|s| s != sys) {
                        continue;
                    }
                    let dir = root.join(format!("{}-{}", sys.name(), run));
                    let smp =
                        run_append(sys, &dir, spec.mode, spec.writers, spec.batch, p, &timing);
                    let _ = std::fs::remove_dir_all(&dir);
                    let commit = smp.commit.map_or(String::new(), |(g, f, ms, share)| {
                        format!(
                            ", {g:.0} events/group, {f:.0} syncs/s of {ms:.2} ms = {:.0}% of the run",
                            100.0 * share
                        )
                    });
                    eprintln!(
                        "{:<22} {:<8} run {}: {:>9} ev/s ({:.0} B/event, {:.2} B written per event byte, \
                         {:.2} cores busy ({:.2} committer), other processes {:.2} cores{commit})",
                        spec.id(),
                        sys.name(),
                        run + 1,
                        fmt_rate(smp.rate),
                        smp.bytes,
                        smp.write_amp,
                        smp.cpu.0,
                        smp.cpu.1,
                        smp.cpu.2,
                    );
                    samples[i].push(smp);
                }
            }
            let mut r = RowResult::default();
            for (i, v) in samples.iter().enumerate() {
                let pick = |f: &dyn Fn(&Sample) -> f64| median(v.iter().map(f).collect());
                r.rate[i] = pick(&|s| s.rate);
                r.bytes[i] = pick(&|s| s.bytes);
                r.amp[i] = pick(&|s| s.write_amp);
                r.cpu[i] = pick(&|s| s.cpu.0);
                if !v.is_empty() {
                    r.others = r.others.max(pick(&|s| s.cpu.2));
                }
                if i == 0 {
                    r.commit_cpu = pick(&|s| s.cpu.1);
                }
                if i == 0 && !v.is_empty() {
                    let c = |k: usize| {
                        pick(&|s| s.commit.map_or(f64::NAN, |c| [c.0, c.1, c.2, c.3][k]))
                    };
                    r.commit = Some((c(0), c(1), c(2), c(3)));
                }
            }
            results.push((spec, r));
        }
    }

    let mut replays = Vec::new();
    if opts.replay && opts.filter.is_none() && opts.system.is_none() {
        let scale = if opts.quick { 1 } else { 2 };
        for (p, n) in [
            (payload(256), 100_000 * scale),
            (payload(1024), 50_000 * scale),
        ] {
            replays.push((p, run_replay(&root.join("replay"), p, n, opts.runs)));
        }
    }
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());

    // The report.
    println!();
    println!("{header}");
    println!(
        "Runs: median of {} run(s), each {:.1} s measured after a {:.2} s warm-up, fresh directory per run; \
         {BATCH} events per append call unless the batch column says 1; flush interval {} ms; \
         MB/s = events/s × encoded event bytes (1 MB = 10^6 B).",
        opts.runs,
        opts.secs,
        opts.warmup,
        FLUSH_INTERVAL.as_millis()
    );
    for p in &payloads {
        let actual = results
            .iter()
            .filter(|(s, r)| s.size == p.target && r.rate[0].is_finite())
            .map(|(_, r)| r.bytes[0])
            .next()
            .or_else(|| {
                replays
                    .iter()
                    .find(|(q, _)| q.target == p.target)
                    .map(|(_, r)| r.outrider_bytes)
            });
        println!(
            "Encoded event, {} class: outrider {} B per event on average (protobuf, id/stream/version/position/origin/time assigned by the log; \
             plus 9 B record framing); baselines write {} B per event (plain file: + 4 B length prefix).",
            p.label(),
            actual.map_or("–".into(), |b| format!("{b:.1}")),
            p.encoded.len()
        );
    }
    if !results.is_empty() {
        println!();
        println!("| durability | event | writers | events/append | outrider events/s | outrider MB/s | plain file events/s | plain MB/s | raw sled events/s | sled MB/s | outrider ÷ plain | outrider ÷ sled | target |");
        println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
        let plain_gc_1k_8 = results
            .iter()
            .find(|(s, _)| {
                s.mode == Mode::Sync && s.size == 1024 && s.writers == 8 && s.batch == BATCH
            })
            .map(|(_, r)| r.rate[1]);
        for (s, r) in &results {
            let target = match (s.mode, s.size, s.writers, s.batch) {
                (Mode::Sync, 1024, 8, BATCH) => match plain_gc_1k_8 {
                    Some(pl) if pl.is_finite() && r.rate[0].is_finite() => format!(
                        "≥ 50% of plain group commit: **{}** ({:.0}%)",
                        if r.rate[0] >= 0.5 * pl {
                            "PASS"
                        } else {
                            "MISS"
                        },
                        100.0 * r.rate[0] / pl
                    ),
                    _ => "≥ 50% of plain group commit: –".into(),
                },
                (Mode::Periodic, 256, _, BATCH) if r.rate[0].is_finite() => format!(
                    "≥ 500K events/s: **{}**",
                    if r.rate[0] >= 500_000.0 {
                        "PASS"
                    } else {
                        "MISS"
                    }
                ),
                _ => String::new(),
            };
            let mode = match s.mode {
                Mode::Sync => "sync (group commit + fdatasync)".to_string(),
                Mode::Periodic => format!("periodic ({} ms)", FLUSH_INTERVAL.as_millis()),
            };
            let base = payload(s.size).encoded.len() as f64;
            println!(
                "| {mode} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {target} |",
                payload(s.size).label(),
                s.writers,
                s.batch,
                fmt_rate(r.rate[0]),
                fmt_mb(r.rate[0], r.bytes[0]),
                fmt_rate(r.rate[1]),
                fmt_mb(r.rate[1], base),
                fmt_rate(r.rate[2]),
                fmt_mb(r.rate[2], base),
                fmt_ratio(r.rate[0], r.rate[1]),
                fmt_ratio(r.rate[0], r.rate[2]),
            );
        }
        println!();
        println!(
            "Baselines. Plain file, sync: writers queue their length-prefixed batch; a leader writes all queued batches \
             with one write() and fdatasyncs once (with 1 writer: write + fdatasync per batch). Plain file, periodic: \
             one O_APPEND write() per batch, fdatasync every {} ms from a background thread. Raw sled 0.34 (same cache \
             and segment size as the runtime, no background flush): one key (u64 BE) per event; sync: flush + \
             fdatasync of the db file after every batch, by each writer; periodic: no flush at all.",
            FLUSH_INTERVAL.as_millis()
        );
        println!();
        println!("| durability | event | writers | events/append | outrider events/commit group | outrider syncs/s | mean sync() ms | share of run in sync() | cores busy: outrider (committer thread) | plain | sled | other processes (cores) | bytes written ÷ event bytes: outrider | plain | sled |");
        println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (s, r) in &results {
            let (g, f, ms, share) = r.commit.unwrap_or((f64::NAN, f64::NAN, f64::NAN, f64::NAN));
            let num = |v: f64, digits: usize| {
                if v.is_finite() {
                    format!("{v:.digits$}")
                } else {
                    "–".into()
                }
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} |",
                s.mode.name(),
                payload(s.size).label(),
                s.writers,
                s.batch,
                num(g, 0),
                num(f, 0),
                num(ms, 2),
                if share.is_finite() {
                    format!("{:.0}%", 100.0 * share)
                } else {
                    "–".into()
                },
                num(r.cpu[0], 2),
                num(r.commit_cpu, 2),
                num(r.cpu[1], 2),
                num(r.cpu[2], 2),
                num(r.others, 2),
                num(r.amp[0], 2),
                num(r.amp[1], 2),
                num(r.amp[2], 2),
            );
        }
        println!();
        println!(
            "Diagnostics (medians): outrider's commit groups and its `sync()` calls (sled flush + fdatasync of the db file + \
             blobs dir scan; in periodic mode, the flusher's) from the log's metrics, over the whole run including the warm-up; \
             cores busy = CPU time (user + system, /proc) in the measuring window ÷ its length, for the whole process \
             (writers, committer, sled's threads) and for the `outrider-commit` thread alone; other processes = machine-wide \
             busy time (/proc/stat, steal included) minus this process's, the highest of the three systems' medians \
             (anything above ~0.1 means the row was measured on a shared machine); \
             bytes written = `wchar` of /proc/self/io (everything the process passed to write/pwrite, page cache included) \
             over the run ÷ (events × encoded event bytes)."
        );
    }
    if !replays.is_empty() {
        println!();
        println!("| replay | events | outrider read_all events/s | outrider MB/s | plain file events/s | plain MB/s | raw sled events/s | sled MB/s | outrider ÷ plain | outrider ÷ sled |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (p, r) in &replays {
            let base = p.encoded.len() as f64;
            println!(
                "| {} events | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.label(),
                r.events,
                fmt_rate(r.outrider),
                fmt_mb(r.outrider, r.outrider_bytes),
                fmt_rate(r.plain),
                fmt_mb(r.plain, base),
                fmt_rate(r.sled),
                fmt_mb(r.sled, base),
                fmt_ratio(r.outrider, r.plain),
                fmt_ratio(r.outrider, r.sled),
            );
        }
        println!();
        let raw: Vec<String> = replays
            .iter()
            .map(|(p, r)| {
                format!(
                    "{}: plain {} events/s, sled {} events/s",
                    p.label(),
                    fmt_rate(r.plain_raw),
                    fmt_rate(r.sled_raw)
                )
            })
            .collect();
        println!(
            "Replay: the whole log, written beforehand (outrider: 1 writer, {BATCH} per append, then closed and reopened), \
             read from the page cache (not dropped). Outrider pages through `read_all(from, {READ_PAGE})`; the plain file is read \
             through a 1 MiB BufReader; sled is iterated in key order. All three decode every event into an `Event` \
             (prost). Without decoding: {}.",
            raw.join("; ")
        );
    }
}
