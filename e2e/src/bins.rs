//! Finding the `outrider-agent` and `outrider-cloud` binaries.
//!
//! Cargo sets `CARGO_BIN_EXE_<name>` only for the binaries of the test's own package, and a
//! dependency cannot make Cargo build another package's binaries (artifact dependencies are
//! unstable; `outrider-cloud` has no library at all). So:
//!
//! 1. `OUTRIDER_E2E_BIN_DIR`, when set, names the directory holding both binaries (e.g. a
//!    release build); nothing is built and a missing binary is an error.
//! 2. Otherwise they are taken from the test executable's profile directory:
//!    `target/<profile>/deps/<test>` → `target/<profile>/`. `cargo test --workspace` (CI) builds
//!    them there in the same invocation, since the agent's and the cloud's own integration tests
//!    need them.
//! 3. When one is missing there, or older than a source file of the crates it is built from
//!    (`cargo test -p outrider-e2e` after an edit does not rebuild them), this runs
//!    `cargo build -p outrider-agent -p outrider-cloud --bins` for the same profile and target
//!    directory (once per test process), and fails with Cargo's output if that fails.
//!
//! Step 3 never runs in CI's `cargo test --workspace`, where the binaries are fresh.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use anyhow::{bail, Context as _};

/// The environment variable naming a directory with prebuilt binaries.
pub const BIN_DIR_VAR: &str = "OUTRIDER_E2E_BIN_DIR";

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `outrider-agent`.
    pub agent: PathBuf,
    /// `outrider-cloud`.
    pub cloud: PathBuf,
}

/// The directories (relative to the workspace root) whose files the two binaries are built from.
const SOURCES: &[&str] = &[
    "Cargo.lock",
    "Cargo.toml",
    "proto",
    "agent/runtime",
    "agent/daemon",
    "cloud/ingest",
    "cloud/server",
];

/// The binaries, located (and built if needed) once per process.
pub fn binaries() -> anyhow::Result<Binaries> {
    static FOUND: OnceLock<Result<Binaries, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| locate().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn exe(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

fn locate() -> anyhow::Result<Binaries> {
    if let Some(dir) = std::env::var_os(BIN_DIR_VAR) {
        let dir = PathBuf::from(dir);
        let bins = Binaries {
            agent: exe(&dir, "outrider-agent"),
            cloud: exe(&dir, "outrider-cloud"),
        };
        for b in [&bins.agent, &bins.cloud] {
            if !b.is_file() {
                bail!(
                    "{BIN_DIR_VAR}={}: {} does not exist",
                    dir.display(),
                    b.display()
                );
            }
        }
        return Ok(bins);
    }
    let test_exe = std::env::current_exe().context("cannot tell the test executable's path")?;
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| {
            format!(
                "the test executable {} is not in target/<profile>/deps/; set {BIN_DIR_VAR}",
                test_exe.display()
            )
        })?
        .to_path_buf();
    let bins = Binaries {
        agent: exe(&profile_dir, "outrider-agent"),
        cloud: exe(&profile_dir, "outrider-cloud"),
    };
    let root = workspace_root();
    let newest_source = newest_mtime(&root, SOURCES);
    let stale = |b: &Path| match std::fs::metadata(b).and_then(|m| m.modified()) {
        Ok(built) => newest_source.is_some_and(|s| s > built),
        Err(_) => true,
    };
    if stale(&bins.agent) || stale(&bins.cloud) {
        build(&root, &profile_dir)?;
        for b in [&bins.agent, &bins.cloud] {
            if !b.is_file() {
                bail!(
                    "`cargo build -p outrider-agent -p outrider-cloud --bins` succeeded but {} \
                     does not exist; set {BIN_DIR_VAR} to a directory with both binaries",
                    b.display()
                );
            }
        }
    }
    Ok(bins)
}

/// The workspace root: this crate's parent directory.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The newest modification time of the files under `root`/`paths` (`target` directories and
/// hidden entries skipped). `None` if nothing could be read.
fn newest_mtime(root: &Path, paths: &[&str]) -> Option<SystemTime> {
    fn walk(p: &Path, newest: &mut Option<SystemTime>) {
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        if meta.is_dir() {
            let Ok(entries) = std::fs::read_dir(p) else {
                return;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') || name == "target" {
                    continue;
                }
                walk(&e.path(), newest);
            }
        } else if let Ok(m) = meta.modified() {
            if newest.is_none_or(|n| m > n) {
                *newest = Some(m);
            }
        }
    }
    let mut newest = None;
    for p in paths {
        walk(&root.join(p), &mut newest);
    }
    newest
}

/// `cargo build -p outrider-agent -p outrider-cloud --bins` into `profile_dir`'s target directory
/// with its profile.
fn build(root: &Path, profile_dir: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let profile = profile_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target_dir = profile_dir.parent().context("no target directory")?;
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "-p",
            "outrider-agent",
            "-p",
            "outrider-cloud",
            "--bins",
        ])
        .env("CARGO_TARGET_DIR", target_dir);
    match profile.as_str() {
        // The test profile builds into debug/ too; its binaries are the dev profile's.
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!(
        "e2e: building the binaries under test: {cmd:?} (they were missing or older than their sources)"
    );
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cargo:?} to build the binaries under test"))?;
    if !out.status.success() {
        bail!(
            "building the binaries under test failed ({}): {cmd:?}\n{}\nRun `cargo build -p \
             outrider-agent -p outrider-cloud --bins` yourself, or set {BIN_DIR_VAR}.",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
