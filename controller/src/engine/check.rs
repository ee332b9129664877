//! `slipctl check PROJECT ENV` (Walle's 检测): before a deploy, per host — reachable, certificate
//! valid and days left, agent version, target user, deploy_to allowed and writable, `current`
//! absent or a symlink, free disk — and that the ref resolves. Each failure comes with its fix.

use serde::Serialize;
use slipway_common::time::unix_now;
use slipway_proto::pb;

use crate::engine::client::{self, Timeouts, status_text};
use crate::engine::events::Emitter;
use crate::engine::fanout::fan_out;
use crate::engine::scope::{load_scope, pb_target};
use crate::error::Result;
use crate::source::{git, vcs};
use crate::state::home::Home;
use crate::state::store::AgentRecord;

#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    pub host: String,
    pub check: String,
    pub ok: bool,
    pub detail: String,
    pub fix: String,
}

fn row(host: &str, check: &str, result: std::result::Result<String, (String, String)>) -> CheckRow {
    let (ok, detail, fix) = match result {
        Ok(d) => (true, d, String::new()),
        Err((d, f)) => (false, d, f),
    };
    let clean = |t: String| slipway_common::redact::redact(&t).into_owned();
    CheckRow { host: host.into(), check: check.into(), ok, detail: clean(detail), fix: clean(fix) }
}

fn days_left(not_after: i64) -> std::result::Result<String, (String, String)> {
    let days = (not_after - unix_now()) / 86_400;
    if not_after == 0 {
        Err(("the agent did not report its certificate".into(), "upgrade slipd".into()))
    } else if days < 0 {
        Err(("certificate expired".into(), "issue a new bundle with `slipctl agent rm` + `slipctl agent add`".into()))
    } else if days < 30 {
        Err((format!("certificate expires in {days} days"), "issue a new bundle before it expires".into()))
    } else {
        Ok(format!("valid, {days} days left"))
    }
}

pub async fn run(
    home: &Home,
    project: &str,
    env: &str,
    git_ref: Option<&str>,
    timeouts: Timeouts,
) -> Result<Vec<CheckRow>> {
    let scope = load_scope(home, project, env, None)?;
    let settings = &scope.settings;
    let tls = home.client_tls()?;
    let mut rows = Vec::new();

    let controller_pem = std::fs::read_to_string(home.controller_tls().cert).unwrap_or_default();
    let controller_cert =
        slipway_common::pki::first_cert_der(&controller_pem).and_then(|d| slipway_common::pki::cert_info(&d));
    rows.push(row(
        "controller",
        "certificate",
        controller_cert
            .map_err(|e| (e.to_string(), "run `slipctl init` in a new home".into()))
            .and_then(|i| days_left(i.not_after)),
    ));
    let mirror = git::mirror_path(&home.cache(), &settings.project);
    let url = crate::engine::scope::repo_url(&scope.project, settings);
    let git_ref = git_ref.unwrap_or(&settings.default_ref);
    let fix = if git_ref == settings.default_ref {
        "push the ref or change default_ref"
    } else {
        "push the ref or pass another --ref"
    };
    let resolved = match vcs::fetch(settings, &url, &mirror).await {
        Ok(()) => vcs::resolve(settings, &url, &mirror, git_ref)
            .await
            .map(|r| format!("{git_ref} is {} \"{}\"", vcs::short(&r.commit), r.summary))
            .map_err(|e| (e.to_string(), fix.into())),
        Err(e) => Err((e.to_string(), "check the repo URL and the controller's credentials for it".into())),
    };
    rows.push(row("controller", "ref", resolved));

    let agents: std::collections::BTreeMap<String, AgentRecord> =
        scope.hosts.iter().map(|a| (a.name.clone(), a.clone())).collect();
    let names: Vec<String> = scope.hosts.iter().map(|a| a.name.clone()).collect();
    let mut per_host = fan_out(&names, &Emitter::discard(), &mut None, |host, _events| {
        let agent = agents[&host].clone();
        let (tls, target) = (tls.clone(), pb_target(settings, &agent.name));
        let user = settings.target.user.clone().unwrap_or_default();
        let hook_commands: Vec<String> =
            settings.target.pre_release.iter().chain(&settings.target.post_release).cloned().collect();
        async move {
            let mut out = Vec::new();
            let mut c = match client::connect(tls, &agent, timeouts).await {
                Ok(c) => {
                    out.push(row(&agent.name, "reachable", Ok(format!("mTLS to {} ok", agent.addr))));
                    c
                }
                Err(e) => {
                    let fix = "start slipd on the host, open the port, or fix --addr (slipctl agent rm/add)";
                    out.push(row(&agent.name, "reachable", Err((e.to_string(), fix.into()))));
                    return out;
                }
            };
            match c.info(pb::InfoRequest {}).await {
                Ok(info) => {
                    let info = info.into_inner();
                    out.push(row(&agent.name, "certificate", days_left(info.cert_not_after)));
                    let same = info.version == slipway_common::VERSION;
                    out.push(row(
                        &agent.name,
                        "version",
                        if same {
                            Ok(format!("slipd {}", info.version))
                        } else {
                            Err((
                                format!("slipd {} (slipctl is {})", info.version, slipway_common::VERSION),
                                "install the same version on both sides".into(),
                            ))
                        },
                    ));
                }
                Err(s) => out.push(row(&agent.name, "version", Err((status_text(&s), String::new())))),
            }
            match c.check(pb::CheckRequest { target: Some(target), user, hook_commands }).await {
                Ok(reply) => {
                    for item in reply.into_inner().items {
                        let result = if item.ok { Ok(item.detail) } else { Err((item.detail, item.fix)) };
                        out.push(row(&agent.name, &item.name, result));
                    }
                }
                Err(s) => out.push(row(&agent.name, "checks", Err((status_text(&s), "upgrade slipd".into())))),
            }
            out
        }
    })
    .await;
    // In the env's host order.
    rows.extend(names.iter().filter_map(|h| per_host.remove(h)).flatten());
    // The balancer answers and knows every host, before a deploy needs it.
    if let Some(drainer) = crate::engine::drain::Drainer::of(&scope, tls.clone(), timeouts)? {
        for agent in &scope.hosts {
            let result =
                drainer.check(agent).await.map_err(|e| (e.to_string(), "fix [rollout.drain] or the balancer".into()));
            rows.push(row(&agent.name, "drain", result));
        }
    }
    Ok(rows)
}
