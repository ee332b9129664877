//! Harness for end-to-end tests: a temp dir with a controller home, real `slipd` processes on
//! loopback (killed on drop), real git repositories, and `slipctl` run as a process.

#![forbid(unsafe_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod browser;
pub mod directory;
pub mod oidc;
pub mod pg;
pub mod s3;
mod server;
pub use server::{
    Server, Sse, SseReader, add_admin, add_user, connect_from, have_metrics_parser, http, http_from, parse_metrics,
    raise_fd_limit, sample, sink,
};

/// A built binary of this workspace (`cargo test --workspace` builds them before tests run).
/// `SLIPWAY_TEST_BIN_DIR` points the tests at other builds of `slipctl` and `slipd` (an
/// older commit's, to see an attacker's test fail before its fix).
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("SLIPWAY_TEST_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// Result of one `slipctl` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn code(self, expected: i32) -> Run {
        assert_eq!(self.code, expected, "unexpected exit status\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One `slipd`.
pub struct Agent {
    pub name: String,
    pub port: u16,
    pub bundle: PathBuf,
    pub root: PathBuf,
    child: Option<Child>,
    starts: usize,
    /// Network namespace the agent runs in, if any.
    pub netns: Option<String>,
    /// Run slipd with this open-file limit (soft and hard), as `prlimit` sets it.
    pub nofile: Option<u64>,
}

impl Agent {
    /// An agent whose `agent.toml` and pki files are in `bundle` (written by `slipd join`),
    /// listening on `port`, writing under `root`; not started.
    pub fn joined(name: &str, port: u16, bundle: PathBuf, root: PathBuf) -> Agent {
        Agent { name: name.into(), port, bundle, root, child: None, starts: 0, netns: None, nofile: None }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "agent {} already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.bundle.join("slipd.log")).unwrap();
        let mut command = match (&self.netns, self.nofile) {
            (Some(ns), _) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("slipd"));
                c
            }
            (None, Some(n)) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin("slipd"));
                c
            }
            (None, None) => Command::new(bin("slipd")),
        };
        let mut child = command
            .arg("--config")
            .arg(self.bundle.join("agent.toml"))
            .env("SLIPWAY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // Ready means reconciled and serving: slipd logs "slipd listening" after reconciling.
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().matches("slipd listening").count() < self.starts + 1 {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("slipd {} exited with {status}:\n{}", self.name, self.log());
            }
            assert!(Instant::now() < deadline, "slipd {} did not listen in time", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        self.starts += 1;
        self.child = Some(child);
    }

    /// Send a signal to slipd (e.g. STOP to freeze it like a hung host, CONT to thaw it).
    pub fn signal(&self, signal: rustix::process::Signal) {
        let child = self.child.as_ref().expect("agent running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// The running slipd's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.bundle.join("slipd.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A controller home and N agents, each with its own root under the temp dir.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub agents: Vec<Agent>,
}

impl Fleet {
    /// `slipctl init`, then `n` agents web-1..web-n, labelled role=web, registered and running.
    pub fn new(n: usize) -> Fleet {
        let dir = tempfile::Builder::new().prefix("slipway-e2e-").tempdir().unwrap();
        let home = dir.path().join("home");
        let mut fleet = Fleet { home, dir, agents: Vec::new() };
        fleet.slipctl(&["init"]).ok();
        // `SLIPWAY_TEST_STATE=postgres`: this home keeps its state in a database of its own.
        if std::env::var("SLIPWAY_TEST_STATE").as_deref() == Ok("postgres") {
            let url = pg::cluster().database();
            std::fs::write(fleet.home.join("config.toml"), format!("[state]\nurl = \"{url}\"\n")).unwrap();
        }
        for i in 1..=n {
            fleet.add_agent(&format!("web-{i}"), true);
        }
        fleet
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Register an agent (and start it when `start`).
    pub fn add_agent(&mut self, name: &str, start: bool) -> usize {
        let port = free_port();
        self.register(name, "127.0.0.1", port, None, start)
    }

    /// Register an agent that runs inside network namespace `ns`, reached at `ns.ip_ns`.
    pub fn add_agent_in(&mut self, name: &str, ns: &NetNs) -> usize {
        self.register(name, &ns.ip_ns.clone(), 7443, Some(ns.name.clone()), true)
    }

    fn register(&mut self, name: &str, ip: &str, port: u16, netns: Option<String>, start: bool) -> usize {
        let bundle = self.path().join("agents").join(name);
        let root = self.path().join("hosts").join(name);
        std::fs::create_dir_all(&root).unwrap();
        let addr = format!("{ip}:{port}");
        let state = bundle.join("state");
        self.slipctl(&[
            "agent",
            "add",
            name,
            "--addr",
            &addr,
            "--label",
            "role=web",
            "--out",
            bundle.to_str().unwrap(),
            "--listen",
            &addr,
            "--state-dir",
            state.to_str().unwrap(),
            "--allowed-root",
            root.to_str().unwrap(),
        ])
        .ok();
        let mut agent = Agent { name: name.into(), port, bundle, root, child: None, starts: 0, netns, nofile: None };
        if start {
            agent.start();
        }
        self.agents.push(agent);
        self.agents.len() - 1
    }

    pub fn slipctl(&self, args: &[&str]) -> Run {
        self.slipctl_env(args, &[])
    }

    /// `slipctl deploy PROJECT test` must succeed; returns the release it deployed.
    pub fn deploy_ok(&self, project: &str) -> String {
        self.slipctl(&["--output", "json", "deploy", project, "test"]).ok().json()["release"]
            .as_str()
            .expect("deploy record has a release")
            .to_owned()
    }

    /// The controller's own mTLS client config, as `slipctl` builds it from the home.
    pub fn controller_tls(&self) -> std::sync::Arc<rustls::ClientConfig> {
        let read = |p: &str| std::fs::read_to_string(self.home.join("pki").join(p)).unwrap();
        let material = slipway_common::tls::TlsMaterial {
            ca_pem: read("ca.pem"),
            cert_pem: read("controller.pem"),
            key_pem: read("controller.key"),
        };
        slipway_common::tls::controller_client_config(&material).unwrap()
    }

    /// Agent `index` as the controller's registry knows it (name and address).
    pub fn agent_record(&self, index: usize) -> slipway_controller::store::AgentRecord {
        let a = &self.agents[index];
        slipway_controller::store::AgentRecord {
            name: a.name.clone(),
            addr: a.addr(),
            labels: Default::default(),
            added_at: 0,
            trust: Default::default(),
        }
    }

    /// Start `slipctl` in the background (stdout discarded, stderr piped).
    pub fn spawn_slipctl(&self, args: &[&str]) -> Child {
        Command::new(bin("slipctl"))
            .arg("--home")
            .arg(&self.home)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn slipctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(bin("slipctl"));
        cmd.arg("--home").arg(&self.home).args(args).stdin(Stdio::null()).env("SLIPWAY_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run::from(cmd.output().unwrap())
    }

    /// Write and apply a project whose env `test` targets every role=web agent.
    pub fn apply_project(&self, name: &str, repo: &Path, extra: &str) -> PathBuf {
        self.apply_project_full(name, repo, extra, "", "")
    }

    /// Same, with extra keys at the top level, in `[target]` and in `[env.test]`.
    pub fn apply_project_full(&self, name: &str, repo: &Path, top: &str, target: &str, env: &str) -> PathBuf {
        let hosts_root = self.path().join("hosts");
        let file = self.path().join(format!("{name}.toml"));
        let text = format!(
            "name = \"{name}\"\nrepo = \"{}\"\nkeep_releases = 3\n{top}\n\
             [target]\ndeploy_to = \"{root}/{{host}}/{name}\"\ncurrent = \"{root}/{{host}}/www/{name}\"\n{target}\n\
             [env.test]\nhosts = [\"role=web\"]\n{env}\n",
            repo.display(),
            root = hosts_root.display()
        );
        std::fs::write(&file, text).unwrap();
        self.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).ok();
        file
    }

    pub fn deploy_to(&self, host: &str, project: &str) -> PathBuf {
        self.path().join("hosts").join(host).join(project)
    }

    pub fn current(&self, host: &str, project: &str) -> PathBuf {
        self.path().join("hosts").join(host).join("www").join(project)
    }

    /// The release id `current` points at, if any.
    pub fn current_release(&self, host: &str, project: &str) -> Option<String> {
        std::fs::read_link(self.current(host, project))
            .ok()
            .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
    }

    /// Release directories on a host, sorted (staging and trash, which start with '.', left out).
    pub fn releases(&self, host: &str, project: &str) -> Vec<String> {
        self.releases_dir_entries(host, project).into_iter().filter(|n| !n.starts_with('.')).collect()
    }

    /// Everything in a host's releases dir, hidden entries included, sorted.
    pub fn releases_dir_entries(&self, host: &str, project: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.deploy_to(host, project).join("releases"))
            .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// A real git repository driven by the `git` command.
pub struct Repo {
    pub path: PathBuf,
}

impl Repo {
    pub fn new(path: PathBuf) -> Repo {
        std::fs::create_dir_all(&path).unwrap();
        let repo = Repo { path };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(&self.path)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A repository under `dir/repo` with one commit ("v1") of `files` (path, content).
    pub fn with_files(dir: &Path, files: &[(&str, &str)]) -> Repo {
        let repo = Repo::new(dir.join("repo"));
        for (path, content) in files {
            repo.write(path, content);
        }
        repo.commit("v1");
        repo
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// What `git archive <rev>` makes of this repository, unpacked into `dest` by `tar`.
    pub fn archive_into(&self, rev: &str, dest: &Path) {
        std::fs::create_dir_all(dest).unwrap();
        let archive =
            Command::new("git").args(["archive", "--format=tar", rev]).current_dir(&self.path).output().unwrap();
        assert!(archive.status.success(), "git archive: {}", String::from_utf8_lossy(&archive.stderr));
        let tar = dest.with_extension("tar");
        std::fs::write(&tar, &archive.stdout).unwrap();
        let status = Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(dest).status().unwrap();
        assert!(status.success());
    }

    /// Commit everything; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// Compare two trees: same paths, kinds, file bytes, exec bits and symlink targets.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let desc = if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                walk(root, &path, out);
                "dir".to_owned()
            } else {
                let exec = meta.permissions().mode() & 0o111 != 0;
                format!(
                    "file exec={exec} {}",
                    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&path).unwrap()))
                )
            };
            out.push((rel, desc));
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    walk(expected, expected, &mut a);
    walk(actual, actual, &mut b);
    a.sort();
    b.sort();
    assert_eq!(a, b, "trees differ: {} vs {}", expected.display(), actual.display());
}

/// Whether this process is root (CI is; tests that switch users or own files need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// For a test that needs something only CI guarantees (root, nginx): under CI (`CI` set) a
/// missing requirement fails the test; elsewhere it says so on stderr and the test returns.
#[must_use]
pub fn require(what: &str, available: bool) -> bool {
    if !available {
        assert!(std::env::var_os("CI").is_none(), "{what} is required under CI");
        eprintln!("SKIPPED (needs {what}; CI runs it)");
    }
    available
}

/// The `www` user, created when missing (root only). Returns its uid.
pub fn ensure_www() -> u32 {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let uid = |out: Output| String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().ok();
    if let Some(u) = Command::new("id").args(["-u", "www"]).output().ok().filter(|o| o.status.success()).and_then(uid) {
        return u;
    }
    let status = Command::new("useradd")
        .args(["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/bin/sh", "www"])
        .status()
        .expect("useradd");
    assert!(status.success() || Command::new("id").arg("www").status().unwrap().success(), "cannot create user www");
    uid(Command::new("id").args(["-u", "www"]).output().unwrap()).expect("uid of www")
}

/// `target.user` for tests: `www` when root (hooks must not run as root), else the agent's own user.
pub fn hook_user_line() -> String {
    if is_root() {
        ensure_www();
        "user = \"www\"\n".to_owned()
    } else {
        String::new()
    }
}

/// uid and gid of `www` (created when missing; root only).
pub fn www_ids() -> (u32, u32) {
    let uid = ensure_www();
    let gid = String::from_utf8_lossy(&Command::new("id").args(["-g", "www"]).output().unwrap().stdout)
        .trim()
        .parse()
        .expect("gid of www");
    (uid, gid)
}

/// Let `www` traverse every directory from `/` down to `path` (test dirs are 0700 root).
pub fn traversable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut p = PathBuf::from("/");
    for c in path.components().skip(1) {
        p.push(c);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        if mode & 0o011 != 0o011 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o011)).unwrap();
        }
    }
}

/// A gate a hook waits at: a directory under the fleet that the hook user can write, and in it
/// the file the hook touches when it reaches the gate and the one it waits for: `(started, go)`.
pub fn gate(fleet: &Fleet) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let gate = fleet.path().join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    traversable(&gate);
    std::fs::set_permissions(&gate, std::fs::Permissions::from_mode(0o777)).unwrap();
    (gate.join("started"), gate.join("go"))
}

/// An attacker process (`slipway-racer`), racing until [`Racer::finish`].
pub struct Racer {
    child: Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    lines: Vec<String>,
}

impl Racer {
    /// Run as `www` (root only).
    pub fn start(args: &[&str]) -> Racer {
        Racer::start_as(args, Some(www_ids()))
    }

    /// Run as `user` (uid, gid), or as this process's user.
    pub fn start_as(args: &[&str], user: Option<(u32, u32)>) -> Racer {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(bin("slipway-racer"));
        command.args(args).current_dir("/").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        if let Some((uid, gid)) = user {
            command.uid(uid).gid(gid);
        }
        let mut child = command.spawn().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        Racer { child, stdout, lines: Vec::new() }
    }

    /// Wait for the line starting with `prefix` (the racer says when it is in place); the rest of it.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        use std::io::BufRead;
        loop {
            let mut line = String::new();
            assert!(self.stdout.read_line(&mut line).unwrap() > 0, "the racer ended before saying {prefix}");
            let line = line.trim_end().to_owned();
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
            self.lines.push(line);
        }
    }

    /// Stop it; returns how many rounds it ran and the paths it reported.
    pub fn finish(mut self) -> (u64, Vec<String>) {
        use std::io::Read;
        drop(self.child.stdin.take());
        let mut text = String::new();
        let _ = self.stdout.read_to_string(&mut text);
        let _ = self.child.wait();
        let lines: Vec<&str> = self.lines.iter().map(String::as_str).chain(text.lines()).collect();
        let rounds = lines.iter().find_map(|l| l.strip_prefix("rounds ")).and_then(|n| n.parse().ok()).unwrap_or(0);
        let found = lines.iter().filter_map(|l| l.strip_prefix("found ")).map(|s| (*s).to_owned()).collect();
        (rounds, found)
    }
}

impl Drop for Racer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

/// Wait (at most 10 s) until `ok`, looking every 20 ms: for a process outside the test's
/// control (nginx, HAProxy) to be ready.
pub fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether nginx is installed.
pub fn have_nginx() -> bool {
    Command::new("nginx").arg("-v").stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// A real nginx (config and logs in `dir`) with one server per root, each on a port of its
/// own on loopback; the process and the ports, once every one answers.
pub fn nginx(dir: &Path, roots: &[PathBuf]) -> (Proc, Vec<u16>) {
    std::fs::create_dir_all(dir).unwrap();
    let ports: Vec<u16> = roots.iter().map(|_| free_port()).collect();
    let servers: String = ports
        .iter()
        .zip(roots)
        .map(|(p, root)| {
            format!(
                "server {{ listen 127.0.0.1:{p}; root {}; location / {{ try_files $uri =404; }} }}\n",
                root.display()
            )
        })
        .collect();
    let user = if is_root() { "user root;\n" } else { "" };
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "{user}daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 256; }}\n\
             http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n{servers}}}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .args(["-p", dir.to_str().unwrap(), "-c", dir.join("nginx.conf").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let proc = Proc(child);
    for p in &ports {
        wait_for("nginx", || http_get(*p, "/").is_ok());
    }
    (proc, ports)
}

/// One plain HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// Stop a server the way its init system would (SIGTERM), so it takes its workers with it;
/// SIGKILL only if it does not exit within 5 s.
pub fn terminate(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A network namespace joined to this one by a veth pair: a test host on its own network.
/// Removed on drop. Needs root and `ip` (iproute2).
pub struct NetNs {
    pub name: String,
    pub ip_ns: String,
    veth_ns: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl NetNs {
    pub fn new(tag: u8) -> NetNs {
        let id = std::process::id() % 200;
        let name = format!("sw{id}n{tag}");
        let (veth_root, veth_ns) = (format!("sw{id}r{tag}"), format!("sw{id}h{tag}"));
        let (ip_root, ip_ns) = (format!("10.231.{id}.{}", tag * 4 + 1), format!("10.231.{id}.{}", tag * 4 + 2));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = NetNs { name: name.clone(), ip_ns: ip_ns.clone(), veth_ns: veth_ns.clone() };
        ip(&["link", "add", &veth_root, "type", "veth", "peer", "name", &veth_ns]);
        ip(&["link", "set", &veth_ns, "netns", &name]);
        ip(&["addr", "add", &format!("{ip_root}/30"), "dev", &veth_root]);
        ip(&["link", "set", &veth_root, "up"]);
        ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("{ip_ns}/30"), "dev", &veth_ns]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &veth_ns, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Cut (or restore) the host's link: packets are dropped silently, like a real partition.
    pub fn partition(&self, cut: bool) {
        ip(&["netns", "exec", &self.name, "ip", "link", "set", &self.veth_ns, if cut { "down" } else { "up" }]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Whether network namespaces can be made here (root and iproute2).
pub fn netns_available() -> bool {
    is_root() && Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success())
}

/// `n` incompressible bytes (xorshift64*), so uploads take real time.
pub fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Wait (10 s at most) until no process has `marker` in its command line; false if one stays.
pub fn processes_gone(marker: &str) -> bool {
    let alive = || {
        std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|p| {
            std::fs::read(p.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// A tiny tmpfs mounted over `dir` (root only), unmounted when dropped: a full disk on demand.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount `size` (as mount's `size=` takes it, e.g. "1m") over `dir`, which must exist.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tiny"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs over {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
