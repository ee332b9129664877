//! Load for `bench/dashboard.sh`: fills a fresh controller home with PROJECTS projects of ENVS
//! envs on HOSTS agents each (every env with DEPLOYS finished deploys and as many tickets in history,
//! its hosts on two releases), starts `slipctl serve` on it, and times ROUNDS requests of the
//! dashboard page over loopback, printing one JSON line: the page's bytes and the latency
//! percentiles (the server's render and the HTTP exchange; the client is a plain HTTP/1.0 GET),
//! and the history page's median.
//!
//!   slipway-dashboard SLIPCTL HOME PROJECTS ENVS HOSTS DEPLOYS ROUNDS

use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::json;
use slipway_common::ReleaseId;
use slipway_controller::state::tickets::{Audit, TicketKind, TicketRecord, TicketState, Transition};
use slipway_controller::store::{
    AgentRecord, DeployKind, DeployRecord, DeployStatus, HostResult, ProjectRecord, Store,
};
use slipway_tests::http;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [slipctl, home, projects, envs, hosts, deploys, rounds] = args.as_slice() else {
        eprintln!("usage: slipway-dashboard SLIPCTL HOME PROJECTS ENVS HOSTS DEPLOYS ROUNDS");
        std::process::exit(2);
    };
    let n = |s: &str| -> usize { s.parse().expect("a number") };
    let (projects, envs, hosts, deploys, rounds) = (n(projects), n(envs), n(hosts), n(deploys), n(rounds));
    let home = std::path::PathBuf::from(home);
    let run = |args: &[&str]| {
        let ok = Command::new(slipctl).arg("--home").arg(&home).args(args).stdout(Stdio::null()).status().unwrap();
        assert!(ok.success(), "slipctl {args:?}");
    };
    run(&["init"]);
    let t = Instant::now();
    let mut tickets = 0;
    {
        let store = Store::open(&home.join("state")).unwrap();
        let now = slipway_common::time::unix_now();
        let names: Vec<String> = (1..=hosts).map(|i| format!("web-{i:02}")).collect();
        for (i, name) in names.iter().enumerate() {
            let labels = [("role".to_owned(), "web".to_owned())].into_iter().collect();
            let addr = format!("127.0.0.1:{}", 20000 + i);
            store
                .put_agent(&AgentRecord { name: name.clone(), addr, labels, added_at: now, trust: Default::default() })
                .unwrap();
        }
        let env_names: Vec<String> = (1..=envs).map(|e| format!("env{e}")).collect();
        for p in 1..=projects {
            let name = format!("project-{p:02}");
            let mut text =
                format!("name = \"{name}\"\nrepo = \"/nonexistent\"\n[target]\ndeploy_to = \"/srv/{{host}}\"\n");
            for e in &env_names {
                text.push_str(&format!("[env.{e}]\nhosts = [\"role=web\"]\n"));
            }
            let file = home.join(format!("{name}.toml"));
            store
                .put_project(&ProjectRecord {
                    revision: 0,
                    name: name.clone(),
                    source_dir: home.clone(),
                    source_file: file,
                    text,
                    applied_at: now,
                })
                .unwrap();
            for e in &env_names {
                for k in 0..deploys {
                    let commit = format!("{:040x}", p * 1_000_000 + k * 1000 + e.len());
                    let release = ReleaseId::new(now - 3600 + k as i64, &commit).unwrap();
                    let older = ReleaseId::new(now - 7200 + k as i64, &commit).unwrap();
                    let mut d = DeployRecord::start(DeployKind::Deploy, &name, e, "bench".into());
                    d.id = store.next_deploy_id().unwrap();
                    d.git_ref = "main".into();
                    d.commit = commit.clone();
                    d.release = Some(release.clone());
                    d.status = DeployStatus::Succeeded;
                    d.finished_at = Some(now);
                    d.hosts = names
                        .iter()
                        .enumerate()
                        .map(|(i, h)| HostResult {
                            host: h.clone(),
                            addr: String::new(),
                            ok: true,
                            activated: true,
                            previous_release: None,
                            release: Some(if i % 4 == 0 { older.clone() } else { release.clone() }),
                            bytes_sent: 0,
                            steps: Vec::new(),
                            hooks: Vec::new(),
                            error: None,
                            refused: false,
                        })
                        .collect();
                    store.put_deploy(&d).unwrap();
                }
                for _ in 0..deploys {
                    let audit = Audit { by: "bench".into(), at: now, from: "bench".into() };
                    let ticket = TicketRecord {
                        id: store.next_ticket_id().unwrap(),
                        kind: TicketKind::Deploy,
                        project: name.clone(),
                        env: e.clone(),
                        git_ref: "main".into(),
                        commit: "0".repeat(40),
                        commit_summary: "the change".into(),
                        title: format!("ship {name} to {e}"),
                        description: String::new(),
                        state: TicketState::Succeeded,
                        requester: "bench".into(),
                        requester_principal: None,
                        pushed_by: None,
                        pusher_user: None,
                        created: audit.clone(),
                        required: 0,
                        approvals: Vec::new(),
                        deploys: Vec::new(),
                        rollback_of: None,
                        restores: None,
                        build: None,
                        from_deploy: None,
                        start: None,
                        transitions: vec![Transition { state: TicketState::Succeeded, audit, comment: String::new() }],
                    };
                    store.put_ticket(&ticket).unwrap();
                    tickets += 1;
                }
            }
        }
        // The form's project has a history: 20 revisions, each a hook line more.
        let first = store.project("project-01").unwrap().unwrap();
        for r in 1..=20 {
            let text = first.text.replace("[target]\n", &format!("[target]\npre_release = [\"echo {r}\"]\n"));
            let save = slipway_controller::ops::projects::Save {
                text: &text,
                source_file: &first.source_file,
                by: "bench",
                base: None,
                create: false,
                note: "",
            };
            slipway_controller::ops::projects::save(&store, save).unwrap();
        }
        store.flush().unwrap();
    }
    let filled_ms = t.elapsed().as_millis();
    let mut add = Command::new(slipctl)
        .arg("--home")
        .arg(&home)
        .args(["user", "add", "bench", "--admin", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(add.stdin.take().unwrap(), "bench-password").unwrap();
    assert!(add.wait().unwrap().success(), "user add");
    let server = slipway_tests::Server::start_home(&home, std::path::Path::new(slipctl));
    let (cookie, _) = server.login("bench", "bench-password");
    let mut latencies = Vec::new();
    let mut bytes = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let (status, _, body) = http(server.port, "GET", "/", &[("Cookie", &cookie)], None);
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200, "{body}");
        bytes = body.len();
    }
    // The history page (newest 200, unfiltered), for comparison.
    let mut history = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let (status, _, body) = http(server.port, "GET", "/history", &[("Cookie", &cookie)], None);
        history.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200, "{body}");
    }
    history.sort_by(f64::total_cmp);
    // The project form (Walle's 项目配置) of a project with 20 revisions, among 50 projects.
    let mut form = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let (status, _, body) = http(server.port, "GET", "/projects/project-01/edit", &[("Cookie", &cookie)], None);
        form.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("echo 20"), "the form shows the newest revision");
    }
    form.sort_by(f64::total_cmp);
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "{}",
        json!({"projects": projects, "envs": envs, "hosts": hosts, "deploys_per_env": deploys, "tickets": tickets,
               "filled_ms": filled_ms, "bytes": bytes, "rounds": rounds,
               "ms_p50": pct(0.5), "ms_p90": pct(0.9), "ms_max": pct(1.0),
               "history_ms_p50": history[history.len() / 2],
               "form_ms_p50": form[form.len() / 2], "form_ms_max": form[form.len() - 1]})
    );
}
