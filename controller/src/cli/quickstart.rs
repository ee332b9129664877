//! `slipctl quickstart`: a real demo on loopback with nothing to set up. In one directory it
//! creates a CA, three agents (child `slipd` processes with their own roots), a git repository
//! with two commits, then deploys the first, deploys the second and rolls back, printing what
//! happened and where to look. With `--serve` it then keeps the agents running and serves the
//! demo to a browser, with an admin whose one-time password it prints.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::output::{OutputFormat, Reporter};
use crate::engine::{self, DeployArgs, RollbackArgs};
use crate::error::{Context, CtlError, Result};
use crate::state::home::Home;
use crate::state::store::{DeployRecord, DeployStatus, Store};

const HOSTS: [&str; 3] = ["web-1", "web-2", "web-3"];

/// Child agents, stopped (SIGTERM, then SIGKILL) when dropped.
struct Agents(Vec<(String, Child)>);

impl Drop for Agents {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child) in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `slipd` next to this `slipctl`, else on PATH.
pub fn find_slipd() -> Result<PathBuf> {
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("slipd")));
    if let Some(path) = beside.filter(|p| p.is_file()) {
        return Ok(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("slipd")).find(|p| p.is_file()))
        .ok_or_else(|| CtlError::failed("slipd not found next to slipctl or on PATH; build both with `cargo build`"))
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(listener.local_addr().context("local addr")?.port())
}

fn git(repo: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new("git")
        .args(args)
        .current_dir(repo)
        .env("GIT_AUTHOR_NAME", "Slipway Quickstart")
        .env("GIT_AUTHOR_EMAIL", "quickstart@slipway.invalid")
        .env("GIT_COMMITTER_NAME", "Slipway Quickstart")
        .env("GIT_COMMITTER_EMAIL", "quickstart@slipway.invalid")
        .stdout(Stdio::null())
        .status()
        .context("cannot run git (install it, e.g. apt-get install git)")?;
    if status.success() { Ok(()) } else { Err(CtlError::failed(format!("git {} failed", args.join(" ")))) }
}

fn write(path: &Path, content: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).context(format_args!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, content).context(format_args!("cannot write {}", path.display()))
}

fn make_repo(repo: &Path) -> Result<()> {
    std::fs::create_dir_all(repo).context("cannot create the demo repository")?;
    git(repo, &["init", "-q", "-b", "main"])?;
    write(&repo.join("index.html"), "<h1>web-demo v1</h1>\n")?;
    write(&repo.join("assets/app.css"), "body { font-family: sans-serif; }\n")?;
    write(&repo.join("bin/healthz.sh"), "#!/bin/sh\necho ok\n")?;
    std::fs::set_permissions(repo.join("bin/healthz.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .context("chmod")?;
    std::os::unix::fs::symlink("index.html", repo.join("home.html")).context("symlink")?;
    git(repo, &["add", "-A"])?;
    git(repo, &["commit", "-q", "-m", "v1: first page"])?;
    git(repo, &["tag", "v1"])?;
    write(&repo.join("index.html"), "<h1>web-demo v2</h1>\n")?;
    git(repo, &["commit", "-q", "-am", "v2: new headline"])?;
    Ok(())
}

fn wait_listening(port: u16, child: &mut Child, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(CtlError::failed(format!("slipd exited with {status}; see {}", log.display())));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(CtlError::failed(format!("slipd did not listen on port {port} within 15 s; see {}", log.display())))
}

fn check(record: &DeployRecord, what: &str) -> Result<()> {
    if record.status == DeployStatus::Succeeded {
        Ok(())
    } else {
        Err(CtlError::failed(format!("{what} failed: {}", record.error.clone().unwrap_or_default())))
    }
}

/// The demo; with `serve`, then the server on that address with the agents kept running, until
/// SIGTERM or Ctrl-C.
pub async fn run(dir: Option<PathBuf>, out: OutputFormat, serve: Option<std::net::SocketAddr>) -> Result<u8> {
    let started = Instant::now();
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).context(format_args!("cannot create {}", d.display()))?;
            std::path::absolute(d).context("demo dir")?
        }
        None => tempfile::Builder::new().prefix("slipway-quickstart-").tempdir().context("temp dir")?.keep(),
    };
    let say = |line: String| {
        if out == OutputFormat::Text {
            println!("{line}");
        }
    };
    say(format!("== Slipway quickstart in {}", dir.display()));
    let home = Home { root: dir.join("home") };
    home.init()?;
    say(format!("CA and controller identity: {}", home.pki().display()));

    let slipd = find_slipd()?;
    let mut agents = Agents(Vec::new());
    for name in HOSTS {
        let port = free_port()?;
        let bundle = dir.join("agents").join(name);
        let root = dir.join("hosts").join(name);
        std::fs::create_dir_all(&root).context("host root")?;
        crate::state::agents::register_agent(
            &home,
            name,
            &format!("127.0.0.1:{port}"),
            &["role=web".to_owned()],
            &bundle,
            Some(format!("127.0.0.1:{port}")),
            &bundle.join("state"),
            &[root],
        )?;
        let log_path = bundle.join("slipd.log");
        let log = std::fs::File::create(&log_path).context("agent log")?;
        let mut child = Command::new(&slipd)
            .arg("--config")
            .arg(bundle.join("agent.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context(format_args!("cannot start {}", slipd.display()))?;
        wait_listening(port, &mut child, &log_path)?;
        agents.0.push((name.to_owned(), child));
        say(format!("agent {name}: slipd on 127.0.0.1:{port} (mTLS), root {}", dir.join("hosts").join(name).display()));
    }

    let repo = dir.join("repo");
    make_repo(&repo)?;
    say(format!("git repository with two commits: {}", repo.display()));
    let project_file = dir.join("web-demo.toml");
    let hosts_root = dir.join("hosts");
    write(
        &project_file,
        &format!(
            "name = \"web-demo\"\nrepo = {repo:?}\ndefault_ref = \"main\"\nkeep_releases = 3\n\n\
             [target]\ndeploy_to = \"{root}/{{host}}/app\"\ncurrent = \"{root}/{{host}}/www/current\"\n\n\
             [env.demo]\nhosts = [\"role=web\"]\n",
            repo = repo.display().to_string(),
            root = hosts_root.display()
        ),
    )?;
    let text = std::fs::read_to_string(&project_file).context("project file")?;
    let save = crate::ops::projects::Save {
        text: &text,
        source_file: &project_file,
        by: "quickstart",
        base: None,
        create: false,
        note: "",
    };
    crate::ops::projects::save(&Store::open(&home.state())?, save)?;
    say(format!("project web-demo, env demo: {}", project_file.display()));

    let mut reporter = Reporter::new(&crate::cli::Cx::terminal(out));
    let mut records = Vec::new();
    for (step, git_ref) in [("1/3 deploy v1", Some("v1")), ("2/3 deploy main (v2)", None)] {
        say(format!("\n== {step}"));
        let args = DeployArgs { git_ref: git_ref.map(str::to_owned), ..DeployArgs::of("web-demo", "demo") };
        let record = engine::start_deploy(home.clone(), args).finish(|event| reporter.on(event)).await?;
        check(&record, step)?;
        say(page_line(&hosts_root));
        records.push(record);
    }
    say("\n== 3/3 rollback".to_owned());
    let args = RollbackArgs { project: "web-demo".into(), env: "demo".into(), to: None, hosts: None, user: None };
    let record = engine::start_rollback(home.clone(), args).finish(|event| reporter.on(event)).await?;
    check(&record, "rollback")?;
    say(page_line(&hosts_root));
    records.push(record);
    let agents = match serve {
        Some(_) => Some(agents),
        None => {
            drop(agents);
            None
        }
    };

    let total_ms = started.elapsed().as_millis() as u64;
    let deploy_ms: Vec<String> =
        records.iter().map(|r| format!("#{} {}", r.id, crate::cli::output::millis(r.duration_ms))).collect();
    match out {
        OutputFormat::Json | OutputFormat::Jsonl => {
            let doc = serde_json::json!({"dir": dir, "home": home.root, "deploys": records, "total_ms": total_ms});
            println!("{}", out.doc_text(&doc));
        }
        OutputFormat::Text => {
            let sent = crate::cli::output::bytes(records[1].hosts.iter().map(|h| h.bytes_sent).sum());
            println!(
                "\n== done in {}: deployed v1, deployed v2 ({sent} sent in all), rolled back to v1 ({})",
                crate::cli::output::millis(total_ms),
                deploy_ms.join(", ")
            );
            println!("where to look:");
            println!(
                "  releases on a host:   ls -l {}/web-1/app/releases {}/web-1/www",
                hosts_root.display(),
                hosts_root.display()
            );
            println!("  agent logs:           {}/agents/*/slipd.log", dir.display());
            println!(
                "  history and details:  slipctl --home {} history; slipctl --home {} show 3",
                home.root.display(),
                home.root.display()
            );
            println!("  in a browser:         slipctl quickstart --serve (the demo, its agents kept running)");
            println!("  remove the demo:      rm -rf {}", dir.display());
        }
    }
    match (serve, agents) {
        (Some(listen), Some(agents)) => serve_demo(&home, listen, agents, out).await,
        _ => Ok(0),
    }
}

/// The demo in a browser: an admin with a one-time password, the server on `listen` (a free
/// port for port 0), the agents running until the server stops.
async fn serve_demo(home: &Home, mut listen: std::net::SocketAddr, agents: Agents, out: OutputFormat) -> Result<u8> {
    if listen.port() == 0 {
        listen.set_port(free_port()?);
    }
    let store = Store::open(&home.state())?;
    let password = crate::ops::secrets::random_hex()[..20].to_owned();
    let name = "admin";
    match store.user(name)? {
        Some(_) => crate::ops::users::set_password(&store, &crate::ops::audit::Actor::local(), name, &password, None)?,
        None => drop(crate::ops::users::add_user(&store, &crate::ops::audit::Actor::local(), name, true, &password)?),
    }
    drop(store);
    let url = format!("http://{listen}/");
    if out.is_json() {
        println!("{}", out.doc_text(&serde_json::json!({"url": url, "user": name, "password": password})));
    } else {
        println!("\n== the demo in a browser (its three agents keep running; Ctrl-C stops it all)");
        println!("open {url} and log in as {name} with password {password} (shown once)");
    }
    let args = crate::cli::args_team::ServeArgs {
        listen,
        tls_cert: None,
        tls_key: None,
        public_url: None,
        join_listen: None,
        join_url: None,
        agent_cert_ttl: slipway_common::pki::AGENT_CERT_LIFETIME,
    };
    let code = crate::server::serve(home.clone(), args).await?;
    drop(agents);
    Ok(code)
}

/// What each host's `current/index.html` says now.
fn page_line(hosts_root: &Path) -> String {
    let pages: Vec<String> = HOSTS
        .iter()
        .map(|h| {
            let page = std::fs::read_to_string(hosts_root.join(h).join("www/current/index.html")).unwrap_or_default();
            format!("{h}: {}", page.trim())
        })
        .collect();
    format!("current/index.html -> {}", pages.join(" | "))
}
