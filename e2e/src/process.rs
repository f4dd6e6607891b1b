//! Child processes with their output in a file, killed when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(10);

/// A running child process whose stdout and stderr go to a log file. Dropping it kills it
/// (SIGKILL) and reaps it, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` (stdin closed) with its output appended to `log`.
    pub fn spawn(name: impl Into<String>, mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let name = name.into();
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open the log file {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("cannot open the log file {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        Ok(Proc {
            name,
            child: Some(child),
            log: log.to_path_buf(),
            exit: None,
        })
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the process has exited (reaping it).
    pub fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if let Some(s) = self.exit {
            return Ok(Some(s));
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(self.exit);
        };
        let status = child
            .try_wait()
            .with_context(|| format!("cannot poll {}", self.name))?;
        if let Some(s) = status {
            self.exit = Some(s);
            self.child = None;
        }
        Ok(status)
    }

    /// Sends `signal` to the process (nothing if it has exited).
    pub fn signal(&mut self, signal: libc::c_int) -> anyhow::Result<()> {
        if self.try_exit()?.is_some() {
            return Ok(());
        }
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
        // SAFETY: kill(2) on our own child, which has not been reaped yet (so the pid is ours).
        if unsafe { libc::kill(pid, signal) } != 0 {
            let e = std::io::Error::last_os_error();
            bail!("kill({pid}, {signal}) on {}: {e}", self.name);
        }
        Ok(())
    }

    /// SIGKILL, then reaps the process (a killed process is gone within milliseconds; the
    /// deadline is only against a kernel that never delivers it). Returns its exit status.
    pub async fn kill9(&mut self) -> anyhow::Result<ExitStatus> {
        self.stop(libc::SIGKILL, Duration::from_secs(10)).await
    }

    /// Sends `signal` and waits up to `patience` for the process to exit.
    pub async fn stop(
        &mut self,
        signal: libc::c_int,
        patience: Duration,
    ) -> anyhow::Result<ExitStatus> {
        self.signal(signal)?;
        let deadline = Instant::now() + patience;
        loop {
            if let Some(s) = self.try_exit()? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not exit within {patience:?} of signal {signal}\n{}",
                    self.name,
                    tail(&self.log, 40)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (polling the log file) for a line containing `needle`, up to `patience`. Fails
    /// early, with the log's tail, if the process exits first.
    pub async fn wait_for_line(
        &mut self,
        needle: &str,
        patience: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + patience;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| strip_ansi(l).contains(needle)) {
                return Ok(strip_ansi(line));
            }
            if let Some(status) = self.try_exit()? {
                bail!(
                    "{} exited ({status}) before logging {needle:?}\n{}",
                    self.name,
                    tail(&self.log, 40)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not log {needle:?} within {patience:?}\n{}",
                    self.name,
                    tail(&self.log, 40)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last `n` lines of a log file, headed by its path (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            let mut out = format!(
                "---- last {} of {} lines of {} ----\n",
                lines.len() - from,
                lines.len(),
                path.display()
            );
            for l in &lines[from..] {
                out.push_str(&strip_ansi(l));
                out.push('\n');
            }
            out
        }
        Err(e) => format!("---- {}: {e} ----\n", path.display()),
    }
}

/// `s` without ANSI escape sequences (colours), which text logs may carry.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, then one final byte in '@'..='~'.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m listen=1"),
            "2026  INFO listen=1"
        );
    }
}
