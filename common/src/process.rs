//! Running a hook line: `sh -c` in its own process group with a timeout. At the timeout the whole
//! group is killed (children that went to the background too); when the shell exits, whatever it
//! left in its group is killed as well, so no hook leaks processes or holds its pipes open.
//! stdout and stderr are read concurrently, streamed live (bounded) and kept as a bounded head
//! and tail. Used by the agent (release hooks) and the controller (build hooks).

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// Bytes kept from the start and from the end of a hook's output.
pub const KEEP_HEAD: usize = 64 * 1024;
pub const KEEP_TAIL: usize = 64 * 1024;
/// Bytes of one hook's output streamed live; the rest is only kept as head and tail.
pub const LIVE_BUDGET: u64 = 1 << 20;
/// How long to wait for output pipes after the process group is gone.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Output kept: the first KEEP_HEAD bytes, the last KEEP_TAIL, and how many fell in between.
#[derive(Debug, Default)]
pub struct Capture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    dropped: u64,
    live_sent: u64,
}

impl Capture {
    pub fn push(&mut self, mut data: &[u8]) {
        if self.head.len() < KEEP_HEAD {
            let n = data.len().min(KEEP_HEAD - self.head.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= KEEP_TAIL {
            self.dropped += (self.tail.len() + data.len() - KEEP_TAIL) as u64;
            self.tail.clear();
            self.tail.extend(&data[data.len() - KEEP_TAIL..]);
            return;
        }
        let overflow = (self.tail.len() + data.len()).saturating_sub(KEEP_TAIL);
        self.tail.drain(..overflow);
        self.dropped += overflow as u64;
        self.tail.extend(data);
    }

    /// What to stream live for the next `n` bytes: all of them while within budget, then one notice.
    fn live_share(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        let before = self.live_sent;
        self.live_sent += data.len() as u64;
        if self.live_sent <= LIVE_BUDGET {
            Some(data.to_vec())
        } else if before <= LIVE_BUDGET {
            Some(b"\n[slipway: live output stops here; the head and tail are kept]\n".to_vec())
        } else {
            None
        }
    }
}

/// How a hook ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShellResult {
    /// Exit status; -1 when it did not exit by itself (timeout, or could not start).
    pub exit_code: i32,
    pub timed_out: bool,
    pub elapsed_ms: u64,
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    pub dropped: u64,
}

impl ShellResult {
    pub fn ok(&self) -> bool {
        !self.timed_out && self.exit_code == 0
    }
}

/// A chunk of a hook's live output, and which stream it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveChunk {
    pub stderr: bool,
    pub data: Vec<u8>,
}

/// Live output chunks.
pub type Live = mpsc::Sender<LiveChunk>;

/// Cuts a stream of output chunks into whole lines: a line split by a chunk boundary waits for
/// its end (or for [`LineSplitter::finish`]); a line longer than 64 KiB is cut there.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    const MAX_LINE: usize = 64 * 1024;

    /// The lines `data` completes, without their `\n` (or `\r\n`).
    pub fn push(&mut self, data: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in data {
            if b == b'\n' {
                lines.push(self.take());
            } else {
                self.pending.push(b);
                if self.pending.len() >= Self::MAX_LINE {
                    lines.push(self.take());
                }
            }
        }
        lines
    }

    /// What is left of a last line without a newline.
    pub fn finish(&mut self) -> Option<String> {
        (!self.pending.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let mut line = std::mem::take(&mut self.pending);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8_lossy(&line).into_owned()
    }
}

async fn pump(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    capture: Arc<Mutex<Capture>>,
    live: Option<Live>,
    stderr: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let share = {
            let mut c = capture.lock().expect("capture lock");
            c.push(&buf[..n]);
            c.live_share(&buf[..n])
        };
        if let (Some(data), Some(live)) = (share, &live) {
            // Never block the hook on a slow reader: drop live output when the stream is full.
            let _ = live.try_send(LiveChunk { stderr, data });
        }
    }
}

/// What to run and how.
pub struct Shell<'a> {
    pub command: &'a str,
    pub cwd: &'a Path,
    pub env: &'a BTreeMap<String, String>,
    /// Start from an empty environment (the agent) or inherit this process's (the controller).
    pub clear_env: bool,
    pub timeout: Duration,
}

/// Run one hook line; `configure` may adjust the command before spawning (e.g. switch user).
/// Never fails: the result says how it ended.
pub async fn run_shell(
    shell: Shell<'_>,
    configure: impl FnOnce(&mut std::process::Command),
    live: Option<Live>,
) -> ShellResult {
    let started = Instant::now();
    let mut result = ShellResult { exit_code: -1, ..Default::default() };
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(shell.command).current_dir(shell.cwd);
    if shell.clear_env {
        cmd.env_clear();
    }
    cmd.envs(shell.env).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.process_group(0);
    configure(&mut cmd);
    let mut tokio_cmd = tokio::process::Command::from(cmd);
    tokio_cmd.kill_on_drop(true);
    let mut child = match tokio_cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            result.head = format!("cannot start the hook: {e}\n").into_bytes();
            result.elapsed_ms = started.elapsed().as_millis() as u64;
            return result;
        }
    };
    let pgid = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32));
    // However this ends (also when the caller drops this future), the whole group goes.
    let _group = KillGroup(pgid);
    let capture = Arc::new(Mutex::new(Capture::default()));
    let readers = [
        tokio::spawn(pump(child.stdout.take().expect("piped"), capture.clone(), live.clone(), false)),
        tokio::spawn(pump(child.stderr.take().expect("piped"), capture.clone(), live, true)),
    ];
    let status = match tokio::time::timeout(shell.timeout, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            result.timed_out = true;
            None
        }
    };
    if let Some(pgid) = pgid {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
    if result.timed_out {
        let _ = child.wait().await;
    }
    for reader in readers {
        let abort = reader.abort_handle();
        if tokio::time::timeout(DRAIN_GRACE, reader).await.is_err() {
            abort.abort(); // A process that left the group (setsid) still holds the pipe.
        }
    }
    if let Some(status) = status {
        result.exit_code = status.code().unwrap_or_else(|| -status.signal().unwrap_or(1));
    }
    let capture = std::mem::take(&mut *capture.lock().expect("capture lock"));
    result.head = capture.head;
    result.tail = capture.tail.into();
    result.dropped = capture.dropped;
    result.elapsed_ms = started.elapsed().as_millis() as u64;
    result
}

/// Kills a hook's process group when dropped: a hook stopped early leaves no children behind.
struct KillGroup(Option<rustix::process::Pid>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

/// Raise this process's open-file limit to its hard limit (systemd gives services 1,024 soft;
/// a server holding a thousand connections needs more).
pub fn raise_fd_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if let Some(max) = limit.maximum
        && limit.current.is_none_or(|c| c < max)
    {
        let new = rustix::process::Rlimit { current: Some(max), maximum: Some(max) };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Nofile, new) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_arrive_whole() {
        let mut l = LineSplitter::default();
        assert_eq!(l.push(b"cp: cannot cr"), Vec::<String>::new());
        assert_eq!(l.push(b"eate x\r\nnext\n\nlast"), ["cp: cannot create x", "next", ""]);
        assert_eq!(l.finish().as_deref(), Some("last"));
        assert_eq!(l.finish(), None);
        let long = vec![b'a'; 70 * 1024];
        let lines = l.push(&long);
        assert_eq!(lines.len(), 1);
        assert_eq!(l.finish().map(|s| s.len()), Some(6 * 1024));
    }

    #[test]
    fn capture_keeps_head_and_tail() {
        let mut c = Capture::default();
        c.push(&vec![b'h'; KEEP_HEAD]);
        for _ in 0..10 {
            c.push(&vec![b'm'; 50_000]);
        }
        c.push(&[b't'; 1000]);
        assert_eq!(c.head.len(), KEEP_HEAD);
        assert!(c.head.iter().all(|b| *b == b'h'));
        assert_eq!(c.tail.len(), KEEP_TAIL);
        assert!(c.tail.iter().rev().take(1000).all(|b| *b == b't'));
        assert_eq!(c.dropped, 500_000 + 1000 - KEEP_TAIL as u64);
    }

    #[test]
    fn small_output_is_kept_whole() {
        let mut c = Capture::default();
        c.push(b"hello\n");
        assert_eq!((c.head.as_slice(), c.tail.len(), c.dropped), (&b"hello\n"[..], 0, 0));
    }

    fn shell<'a>(command: &'a str, cwd: &'a Path, env: &'a BTreeMap<String, String>, timeout: Duration) -> Shell<'a> {
        Shell { command, cwd, env, clear_env: true, timeout }
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let env = BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]);
        let marker = format!("1000.{}", std::process::id());
        let hook = format!("sleep {marker} & echo started; sleep 30");
        let r = run_shell(shell(&hook, dir.path(), &env, Duration::from_millis(500)), |_| {}, None).await;
        assert!(r.timed_out && !r.ok());
        assert_eq!(r.head, b"started\n");
        assert!(r.elapsed_ms < 10_000, "{}", r.elapsed_ms);
        std::thread::sleep(Duration::from_millis(100));
        let alive = std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
            std::fs::read(p.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
        });
        assert!(!alive, "the background sleep survived");
    }

    #[tokio::test]
    async fn exit_status_env_cwd_and_live_output() {
        let dir = tempfile::tempdir().unwrap();
        let env = BTreeMap::from([("APP_ENV".to_owned(), "production".to_owned())]);
        let (tx, mut rx) = mpsc::channel(16);
        let r = run_shell(
            shell("echo $APP_ENV $(pwd); exit 3", dir.path(), &env, Duration::from_secs(10)),
            |_| {},
            Some(tx),
        )
        .await;
        assert_eq!(r.exit_code, 3);
        let out = String::from_utf8(r.head).unwrap();
        assert!(out.starts_with("production /"), "{out}");
        assert_eq!(rx.recv().await.unwrap().data, out.as_bytes());
    }
}
