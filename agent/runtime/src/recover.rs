//! Opening a log: the sled database, class ids, and the checksum pass that finds torn or corrupt
//! records, reports them by position and cuts the log back to its intact prefix.

use std::path::{Path, PathBuf};

use crate::codec::{self, ClassEntry, ClassState, RecordIter, RecordWriter};
use crate::config::{LogConfig, VerifyOnOpen, TAIL_VERIFY_RECORDS};
use crate::error::{Error, Result};
use crate::log::ClassMeta;

/// sled segment size: pages up to a quarter of it stay inline in the segment files.
const SEGMENT_SIZE: usize = 1 << 20;

/// A record that failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRecord {
    /// Position of the first event that could not be read.
    pub position: u64,
    pub reason: String,
}

/// What opening the log found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Records whose checksums were verified.
    pub verified_records: u64,
    /// The first corrupt or torn record found, if any.
    pub corrupt: Option<CorruptRecord>,
    /// Set when the log was cut back: it now ends just before this position.
    pub truncated_from: Option<u64>,
    /// Records moved to the `quarantine` tree (kept for forensics, not served).
    pub quarantined_records: u64,
    /// Set when the storage engine could not open the directory at all: it was moved here and
    /// a fresh log started in its place.
    pub quarantined_dir: Option<PathBuf>,
    /// One past the last position after opening.
    pub head: u64,
    /// First retained position.
    pub start: u64,
}

/// Whether opening may change the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Cut a damaged log back to its intact prefix; move an unopenable directory aside.
    Repair,
    /// Only report: for offline inspection. The directory must exist; nothing is cut or moved.
    ReportOnly,
}

pub(crate) struct Opened {
    pub(crate) db: sled::Db,
    pub(crate) db_file: std::fs::File,
    pub(crate) classes: Vec<ClassMeta>,
    pub(crate) head: u64,
    pub(crate) start: u64,
    pub(crate) next_sid: u64,
    pub(crate) log_id: String,
    pub(crate) report: OpenReport,
}

/// Why sled would not open a directory.
enum OpenFailure {
    /// The directory's contents are damaged beyond the engine's own recovery.
    Damaged(String),
    /// Anything else (permissions, a full disk, another process holding the lock): not the
    /// data's fault, so the data is left alone.
    Other(sled::Error),
}

fn sled_open(cfg: &LogConfig) -> std::result::Result<sled::Db, OpenFailure> {
    let conf = sled::Config::new()
        .path(&cfg.dir)
        .cache_capacity(cfg.cache_capacity_bytes)
        .segment_size(SEGMENT_SIZE)
        .flush_every_ms(None);
    // A damaged database must never take the process down: treat a panic as damage. (Builds with
    // `panic = "abort"`, like the agent's release build, cannot catch it; `sled_open_guarded`
    // ends the crash loop that follows.)
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || conf.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e @ (sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)))) => {
            Err(OpenFailure::Damaged(e.to_string()))
        }
        Ok(Err(sled::Error::Unsupported(m))) => Err(OpenFailure::Damaged(m)),
        Ok(Err(e)) => Err(OpenFailure::Other(e)),
        Err(_) => Err(OpenFailure::Damaged(
            "the storage engine panicked while opening".into(),
        )),
    }
}

/// Opens sled, waiting briefly for a previous instance in this process to release its lock.
fn sled_open_retrying(cfg: &LogConfig) -> std::result::Result<sled::Db, OpenFailure> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match sled_open(cfg) {
            // sled's I/O threads may hold a closed instance's file lock for a moment.
            Err(OpenFailure::Other(sled::Error::Io(e)))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// The count of consecutive starts that died inside the storage engine's open, in the data
/// directory. A panic inside sled is caught ([`sled_open`]) when the build unwinds; a release build
/// with `panic = "abort"` cannot catch it, so the process dies there instead. This file turns such
/// a crash loop into the same outcome: after [`MAX_DIED_OPENS`] starts in a row died while opening,
/// the directory is treated as damaged and moved aside. A single power cut during an open counts
/// once and is forgiven by the next successful open; a refusal that returns (another instance
/// holds the lock, a permission error) does not count at all.
const OPEN_ATTEMPTS_FILE: &str = "open-attempts";
/// See [`OPEN_ATTEMPTS_FILE`].
const MAX_DIED_OPENS: u32 = 3;

fn read_open_attempts(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Records `n` attempts durably (0 removes the file).
fn write_open_attempts(path: &Path, n: u32) -> std::io::Result<()> {
    if n == 0 {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let mut f = std::fs::File::create(path)?;
    std::io::Write::write_all(&mut f, n.to_string().as_bytes())?;
    f.sync_all()
}

/// [`sled_open_retrying`] under the crash-loop guard of [`OPEN_ATTEMPTS_FILE`] (repair mode).
fn sled_open_guarded(cfg: &LogConfig) -> Result<std::result::Result<sled::Db, OpenFailure>> {
    let path = cfg.dir.join(OPEN_ATTEMPTS_FILE);
    let died = read_open_attempts(&path);
    if died >= MAX_DIED_OPENS {
        return Ok(Err(OpenFailure::Damaged(format!(
            "{died} starts in a row died while the storage engine opened it"
        ))));
    }
    write_open_attempts(&path, died + 1).map_err(data_dir_err(&cfg.dir))?;
    let r = sled_open_retrying(cfg);
    // The open returned: this start did not die in it. A failure that is not damage leaves the
    // count as it was; success clears it.
    let keep = match &r {
        Ok(_) => 0,
        Err(_) => died,
    };
    write_open_attempts(&path, keep).map_err(data_dir_err(&cfg.dir))?;
    Ok(r)
}

fn data_dir_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::DataDir {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn open(cfg: &LogConfig, mode: Mode) -> Result<Opened> {
    let dir = &cfg.dir;
    if mode == Mode::ReportOnly && !dir.join("db").exists() {
        return Err(Error::NoSuchLog(dir.clone()));
    }
    std::fs::create_dir_all(dir).map_err(data_dir_err(dir))?;
    let mut report = OpenReport::default();
    let opened = match mode {
        Mode::Repair => sled_open_guarded(cfg)?,
        Mode::ReportOnly => sled_open_retrying(cfg),
    };
    let db = match opened {
        Ok(db) => db,
        Err(OpenFailure::Other(e)) => {
            return Err(Error::Storage(format!(
                "cannot open {}: {e}",
                dir.display()
            )))
        }
        Err(OpenFailure::Damaged(reason)) if mode == Mode::ReportOnly => {
            return Err(Error::Storage(format!(
                "the storage engine cannot open {}: {reason}",
                dir.display()
            )))
        }
        Err(OpenFailure::Damaged(reason)) => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let aside = PathBuf::from(format!("{}.corrupt-{secs}", dir.display()));
            tracing::error!(dir = %dir.display(), aside = %aside.display(), %reason,
                "the log cannot be opened; moving it aside and starting a fresh one");
            std::fs::rename(dir, &aside).map_err(data_dir_err(dir))?;
            std::fs::create_dir_all(dir).map_err(data_dir_err(dir))?;
            report.quarantined_dir = Some(aside);
            sled_open(cfg).map_err(|f| match f {
                OpenFailure::Damaged(m) => Error::Storage(m),
                OpenFailure::Other(e) => Error::from(e),
            })?
        }
    };
    let db_file = std::fs::File::open(dir.join("db")).map_err(data_dir_err(dir))?;

    let log_id = match db.get(codec::META_LOG_ID)? {
        Some(v) => String::from_utf8_lossy(&v).into_owned(),
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            db.insert(codec::META_LOG_ID, id.as_bytes())?;
            id
        }
    };
    let next_sid = db
        .get(codec::META_NEXT_SID)?
        .and_then(|v| codec::be_u64(&v))
        .unwrap_or(0);
    let classes = class_ids(&db, cfg)?;

    verify(&db, cfg, mode, &mut report)?;

    let reclaimed = db
        .get(codec::META_RECLAIMED)?
        .and_then(|v| codec::be_u64(&v))
        .unwrap_or(0);
    let head = match db.scan_prefix([codec::LOG]).next_back() {
        Some(kv) => {
            let (k, v) = kv?;
            let first = codec::be_u64(&k[1..]).unwrap_or(0);
            // (Only a report-only open can still see a damaged last record here.)
            first + codec::record_header(first, &v).map_or(0, |h| u64::from(h.count))
        }
        None => reclaimed,
    };
    let start = match db.scan_prefix([codec::LOG]).next() {
        Some(kv) => codec::be_u64(&kv?.0[1..]).unwrap_or(0),
        None => head,
    };
    db.flush()?;
    db_file.sync_data()?;
    report.head = head;
    report.start = start;
    Ok(Opened {
        db,
        db_file,
        classes,
        head,
        start,
        next_sid,
        log_id,
        report,
    })
}

/// Gives each configured class a persistent id (0..32), keeping ids of classes seen before.
fn class_ids(db: &sled::Db, cfg: &LogConfig) -> Result<Vec<ClassMeta>> {
    let mut used = 0u32;
    let mut known = Vec::new();
    for kv in db.scan_prefix([codec::CLASS_ID]) {
        let (k, v) = kv?;
        let id = *v.first().unwrap_or(&0);
        used |= 1 << (id % 32);
        known.push((String::from_utf8_lossy(&k[1..]).into_owned(), id));
    }
    let mut out = Vec::with_capacity(cfg.classes.len());
    for c in &cfg.classes {
        let id = match known.iter().find(|(n, _)| *n == c.name) {
            Some((_, id)) => *id,
            None => {
                let Some(id) = (0..32u8).find(|i| used & (1 << i) == 0) else {
                    return Err(Error::Config(format!(
                        "outbox.classes: no class id left for {:?} (32 classes were ever used in this log)",
                        c.name
                    )));
                };
                used |= 1 << id;
                db.insert(codec::class_id_key(&c.name), &[id])?;
                id
            }
        };
        out.push(ClassMeta { id, cfg: c.clone() });
    }
    Ok(out)
}

/// Checks records (the tail or all) and cuts the log at the first bad one.
fn verify(db: &sled::Db, cfg: &LogConfig, mode: Mode, report: &mut OpenReport) -> Result<()> {
    let cut = |db: &sled::Db,
               at: u64,
               record_first: u64,
               intact: Vec<(u8, Vec<u8>)>,
               commit_ms: i64,
               bad: CorruptRecord,
               report: &mut OpenReport| {
        if mode == Mode::ReportOnly {
            report.corrupt = Some(bad);
            return Ok(());
        }
        truncate(db, at, record_first, intact, commit_ms, bad, report)
    };
    let first_key = match cfg.verify_on_open {
        VerifyOnOpen::Full => None,
        VerifyOnOpen::Tail => db
            .scan_prefix([codec::LOG])
            .rev()
            .take(TAIL_VERIFY_RECORDS)
            .last()
            .transpose()?
            .map(|(k, _)| k),
    };
    let from = first_key.map_or(codec::log_key(0).to_vec(), |k| k.to_vec());
    let mut expected_first: Option<u64> = None;
    for kv in db.range(from..=codec::log_key(u64::MAX).to_vec()) {
        let (k, v) = kv?;
        let first = codec::be_u64(&k[1..]).unwrap_or(0);
        report.verified_records += 1;
        if let Some(exp) = expected_first {
            if first != exp {
                let bad = CorruptRecord {
                    position: exp.min(first),
                    reason: format!("gap in the log: expected a record at {exp}, found {first}"),
                };
                return cut(db, exp.min(first), first, Vec::new(), 0, bad, report);
            }
        }
        let (h, it) = match RecordIter::new(first, &v) {
            Ok(x) => x,
            Err(e) => {
                let bad = corrupt_of(first, e);
                return cut(db, first, first, Vec::new(), 0, bad, report);
            }
        };
        let mut intact = Vec::new();
        for raw in it {
            match raw {
                Ok(raw) => intact.push((raw.class, raw.payload.to_vec())),
                Err(e) => {
                    let bad = corrupt_of(first, e);
                    let at = bad.position;
                    return cut(db, at, first, intact, h.commit_ms, bad, report);
                }
            }
        }
        expected_first = Some(first + u64::from(h.count));
    }
    Ok(())
}

fn corrupt_of(first: u64, e: Error) -> CorruptRecord {
    match e {
        Error::Corrupt { position, reason } => CorruptRecord { position, reason },
        other => CorruptRecord {
            position: first,
            reason: other.to_string(),
        },
    }
}

/// Cuts the log so that it ends just before `cut`: the record at `record_first` keeps its
/// `intact` events, later records go to the quarantine tree, and the indexes, cursors and floors
/// are brought back within the new end.
fn truncate(
    db: &sled::Db,
    cut: u64,
    record_first: u64,
    intact: Vec<(u8, Vec<u8>)>,
    commit_ms: i64,
    bad: CorruptRecord,
    report: &mut OpenReport,
) -> Result<()> {
    tracing::error!(position = bad.position, reason = %bad.reason,
        "corrupt record in the log; cutting it back to its intact prefix");
    let quarantine = db.open_tree("quarantine")?;
    let mut batch = sled::Batch::default();
    for kv in db.range(codec::log_key(record_first)..=codec::log_key(u64::MAX)) {
        let (k, v) = kv?;
        quarantine.insert(&k, v)?;
        batch.remove(k);
        report.quarantined_records += 1;
    }
    // Class entries of removed records.
    for kv in db.scan_prefix([codec::CLASS_ENTRY]) {
        let (k, _) = kv?;
        if codec::be_u64(&k[2..]).is_some_and(|p| p >= record_first) {
            batch.remove(k);
        }
    }
    if !intact.is_empty() {
        let mut w = RecordWriter::new(commit_ms);
        let mut entries = [ClassEntry::default(); 32];
        for (i, (class, payload)) in intact.iter().enumerate() {
            w.push(*class, &[payload]);
            let e = &mut entries[usize::from(*class)];
            e.count += 1;
            e.bytes += payload.len() as u64;
            e.commit_ms = commit_ms;
            // One past the class's last event in the record.
            e.end = record_first + i as u64 + 1;
        }
        batch.insert(&codec::log_key(record_first), w.finish());
        for (class, e) in entries.iter().enumerate() {
            if e.count > 0 {
                batch.insert(
                    &codec::class_entry_key(class as u8, record_first),
                    &e.encode()[..],
                );
            }
        }
    }
    // Stream index chunks that point at or past the cut.
    for kv in db.scan_prefix([codec::CHUNK]) {
        let (k, v) = kv?;
        let first = codec::be_u64(&k[9..]).unwrap_or(0);
        let ps = match codec::decode_chunk(first, &v) {
            Ok(ps) => ps,
            Err(_) => {
                batch.remove(k);
                continue;
            }
        };
        if ps.iter().all(|p| *p < cut) {
            continue;
        }
        let kept: Vec<u64> = ps.into_iter().take_while(|p| *p < cut).collect();
        if kept.is_empty() {
            batch.remove(k);
        } else {
            batch.insert(k, codec::encode_chunk(&kept));
        }
    }
    // Cursors and floors past the new end.
    for kv in db.scan_prefix([codec::CURSOR]) {
        let (k, v) = kv?;
        if codec::be_u64(&v).is_some_and(|c| c > cut) {
            batch.insert(k, &cut.to_be_bytes());
        }
    }
    for kv in db.scan_prefix([codec::CLASS_STATE]) {
        let (k, v) = kv?;
        let mut st = ClassState::decode(&v)?;
        if st.floor > cut {
            st.floor = cut;
            batch.insert(k, &st.encode()[..]);
        }
    }
    db.apply_batch(batch)?;
    report.corrupt = Some(bad);
    report.truncated_from = Some(cut);
    Ok(())
}
