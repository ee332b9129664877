//! Release hooks: each line runs by `sh -c` in the release directory, as the project's target
//! user, with the SLIPWAY_* environment and the project's vars, in its own process group. At the
//! timeout the whole group is killed (children that went to the background too); when the shell
//! exits, whatever it left in its group is killed as well, so no hook leaks processes. stdout and
//! stderr are read concurrently, streamed live (bounded) and kept as a bounded head and tail.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_proto::pb;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::error::AgentError;

/// Bytes kept from the start and from the end of a hook's output.
pub const KEEP_HEAD: usize = 64 * 1024;
pub const KEEP_TAIL: usize = 64 * 1024;
/// Bytes of a hook's output streamed live to the controller; the rest is only kept head/tail.
const LIVE_BUDGET: u64 = 1 << 20;
/// How long to wait for output pipes after the process group is gone.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Who hooks run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

async fn command_output(program: &str, args: &[&str]) -> Result<Option<String>, AgentError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| AgentError::io("cannot run", program, e))?;
    Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

/// Look a user up through NSS (`getent passwd`, `id -G`), so LDAP and sssd users work too.
pub async fn resolve_user(name: &str) -> Result<RunAs, AgentError> {
    let passwd = command_output("getent", &["passwd", name]).await?.ok_or_else(|| {
        AgentError::BadRequest(format!(
            "user '{name}' does not exist on this host; create it (useradd {name}) or change target.user"
        ))
    })?;
    let fields: Vec<&str> = passwd.split(':').collect();
    let parse = |i: usize| fields.get(i).and_then(|f| f.parse::<u32>().ok());
    let (Some(uid), Some(gid)) = (parse(2), parse(3)) else {
        return Err(AgentError::State(format!("unexpected passwd entry for '{name}': {passwd}")));
    };
    let home = PathBuf::from(fields.get(5).copied().unwrap_or("/"));
    let groups = command_output("id", &["-G", name])
        .await?
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    Ok(RunAs { name: name.to_owned(), uid, gid, groups, home })
}

/// The agent's own identity (hooks run as it when the project names no user).
pub fn current_user() -> RunAs {
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let name = std::env::var("USER").unwrap_or_else(|_| if uid == 0 { "root".into() } else { uid.to_string() });
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/".into()));
    RunAs { name, uid, gid, groups: vec![gid], home }
}

/// Decide who runs hooks (and owns release files) for a target user name, enforcing the
/// agent's rules: no root unless allowed, and no switching unless the agent is root.
pub async fn decide_user(user: &str, allow_root: bool) -> Result<RunAs, AgentError> {
    let me = rustix::process::geteuid().as_raw();
    let run_as = if user.is_empty() { current_user() } else { resolve_user(user).await? };
    if run_as.uid == 0 && !allow_root {
        return Err(AgentError::NotAllowed(format!(
            "refusing to run hooks as root{}: set target.user in the project (e.g. \"www\") or allow_root_hooks = true in agent.toml",
            if user.is_empty() { " (the project names no target.user)" } else { "" }
        )));
    }
    if me != 0 && run_as.uid != me {
        return Err(AgentError::NotAllowed(format!(
            "slipd runs as uid {me} and cannot act as user '{}'; run slipd as root or set target.user to its own user",
            run_as.name
        )));
    }
    Ok(run_as)
}

/// The environment of every hook (DESIGN.md "Hooks").
#[derive(Debug, Clone, Default)]
pub struct HookEnv {
    pub vars: BTreeMap<String, String>,
}

impl HookEnv {
    pub fn new(run_as: &RunAs, project_vars: &BTreeMap<String, String>, slipway: &[(&str, String)]) -> Self {
        let mut vars = project_vars.clone();
        for (k, v) in slipway {
            vars.insert(format!("SLIPWAY_{k}"), v.clone());
        }
        vars.insert("HOME".into(), run_as.home.display().to_string());
        vars.insert("USER".into(), run_as.name.clone());
        vars.insert("LOGNAME".into(), run_as.name.clone());
        vars.insert("PATH".into(), SAFE_PATH.into());
        vars.insert("LANG".into(), "C.UTF-8".into());
        HookEnv { vars }
    }
}

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

    pub fn into_parts(self) -> (Vec<u8>, Vec<u8>, u64) {
        (self.head, self.tail.into(), self.dropped)
    }
}

/// Where live output goes (the RPC's event stream).
pub type LiveOutput = mpsc::Sender<pb::HookOutput>;

async fn pump(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    capture: Arc<Mutex<Capture>>,
    live: Option<LiveOutput>,
    stage: String,
    command: String,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let send_live = {
            let mut c = capture.lock().expect("capture lock");
            c.push(&buf[..n]);
            let before = c.live_sent;
            c.live_sent += n as u64;
            match before {
                b if b + n as u64 <= LIVE_BUDGET => Some(buf[..n].to_vec()),
                b if b <= LIVE_BUDGET => {
                    Some(b"\n[slipway: live output stops here; head and tail are kept]\n".to_vec())
                }
                _ => None,
            }
        };
        if let (Some(data), Some(live)) = (send_live, &live) {
            // Never block the hook on a slow controller: drop live output when the stream is full.
            let _ = live.try_send(pb::HookOutput { stage: stage.clone(), command: command.clone(), data });
        }
    }
}

/// Run one hook line. Never fails: the result says how it ended.
pub async fn run_hook(
    stage: &str,
    command: &str,
    cwd: &Path,
    env: &HookEnv,
    run_as: &RunAs,
    timeout: Duration,
    live: Option<LiveOutput>,
) -> pb::HookResult {
    let started = Instant::now();
    let mut result =
        pb::HookResult { stage: stage.into(), command: command.into(), exit_code: -1, ..Default::default() };
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(command).current_dir(cwd).env_clear().envs(&env.vars);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.process_group(0);
    if run_as.uid != rustix::process::geteuid().as_raw() {
        crate::privdrop::run_as(&mut cmd, run_as.uid, run_as.gid, &run_as.groups);
    }
    let mut tokio_cmd = tokio::process::Command::from(cmd);
    tokio_cmd.kill_on_drop(true);
    let mut child = match tokio_cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            result.output_head = format!("cannot start the hook: {e}\n").into_bytes();
            result.elapsed_ms = started.elapsed().as_millis() as u64;
            return result;
        }
    };
    let pgid = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32));
    let capture = Arc::new(Mutex::new(Capture::default()));
    let readers = [
        tokio::spawn(pump(
            child.stdout.take().expect("piped"),
            capture.clone(),
            live.clone(),
            stage.into(),
            command.into(),
        )),
        tokio::spawn(pump(child.stderr.take().expect("piped"), capture.clone(), live, stage.into(), command.into())),
    ];
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            result.timed_out = true;
            None
        }
    };
    // Kill the whole group: on timeout, and after a normal exit whatever it left in the background.
    if let Some(pgid) = pgid {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
    if result.timed_out {
        let _ = child.wait().await;
    }
    for reader in readers {
        let abort = reader.abort_handle();
        if tokio::time::timeout(DRAIN_GRACE, reader).await.is_err() {
            abort.abort(); // A process that left the group still holds the pipe.
        }
    }
    if let Some(status) = status {
        result.exit_code = status.code().unwrap_or_else(|| -status.signal().unwrap_or(1));
    }
    let capture = std::mem::take(&mut *capture.lock().expect("capture lock"));
    let (head, tail, dropped) = capture.into_parts();
    result.output_head = head;
    result.output_tail = tail;
    result.output_dropped = dropped;
    result.elapsed_ms = started.elapsed().as_millis() as u64;
    result
}

/// Why a hook failed, in one line for people.
pub fn failure(result: &pb::HookResult, timeout: Duration) -> Option<String> {
    if result.timed_out {
        Some(format!(
            "{} hook `{}` timed out after {}s and was killed",
            result.stage,
            result.command,
            timeout.as_secs()
        ))
    } else if result.exit_code != 0 {
        Some(format!("{} hook `{}` failed with exit status {}", result.stage, result.command, result.exit_code))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_head_and_tail() {
        let mut c = Capture::default();
        c.push(&vec![b'h'; KEEP_HEAD]);
        for _ in 0..10 {
            c.push(&vec![b'm'; 50_000]);
        }
        c.push(&vec![b't'; 1000]);
        let (head, tail, dropped) = c.into_parts();
        assert_eq!(head.len(), KEEP_HEAD);
        assert!(head.iter().all(|b| *b == b'h'));
        assert_eq!(tail.len(), KEEP_TAIL);
        assert!(tail.ends_with(&[b't'; 1000]));
        assert_eq!(dropped, 500_000 + 1000 - KEEP_TAIL as u64);
    }

    #[test]
    fn small_output_is_kept_whole() {
        let mut c = Capture::default();
        c.push(b"hello\n");
        let (head, tail, dropped) = c.into_parts();
        assert_eq!((head.as_slice(), tail.len(), dropped), (&b"hello\n"[..], 0, 0));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let me = current_user();
        let env = HookEnv::new(&me, &BTreeMap::new(), &[]);
        let marker = format!("{}.{}", 1000, std::process::id());
        let hook = format!("sleep {marker} & echo started; sleep 30");
        let r = run_hook("pre_release", &hook, dir.path(), &env, &me, Duration::from_millis(500), None).await;
        assert!(r.timed_out);
        assert_eq!(r.output_head, b"started\n");
        assert!(r.elapsed_ms < 10_000, "{}", r.elapsed_ms);
        std::thread::sleep(Duration::from_millis(100));
        let alive = std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
            std::fs::read(p.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
        });
        assert!(!alive, "the background sleep survived");
    }

    #[tokio::test]
    async fn exit_status_env_and_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let me = current_user();
        let vars = BTreeMap::from([("APP_ENV".to_owned(), "production".to_owned())]);
        let env = HookEnv::new(&me, &vars, &[("PROJECT", "web".into())]);
        let r = run_hook(
            "post_release",
            "echo $SLIPWAY_PROJECT $APP_ENV $(pwd); exit 3",
            dir.path(),
            &env,
            &me,
            Duration::from_secs(10),
            None,
        )
        .await;
        assert_eq!(r.exit_code, 3);
        let out = String::from_utf8(r.output_head).unwrap();
        assert!(out.starts_with("web production /"), "{out}");
        assert!(failure(&r_ok(), Duration::from_secs(1)).is_none());
    }

    fn r_ok() -> pb::HookResult {
        pb::HookResult { exit_code: 0, ..Default::default() }
    }
}
