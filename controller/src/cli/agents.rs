//! The agent commands: register (`add`) or let hosts join (`token`), list with what each
//! answers and how far it is trusted, remove, evict, ban; and the CA's rotation.

use serde_json::json;
use slipway_common::config::ProjectConfig;
use slipway_common::time::{format_utc, unix_now};

use crate::cli::args::AgentCommand;
use crate::cli::args_agents::{CaCommand, JoinTokenCommand};
use crate::cli::output::{millis, table};
use crate::cli::{Cx, print};
use crate::error::{CtlError, Result};
use crate::ops::joins;
use crate::state::home::Home;
use crate::state::store::{AgentRecord, Store};

pub(crate) async fn agent_command(home: &Home, out: &Cx, cmd: AgentCommand) -> Result<u8> {
    match cmd {
        AgentCommand::Add { name, addr, labels, out: dir, listen, state_dir, allowed_roots } => {
            let record = crate::state::agents::register_agent(
                home,
                &name,
                &addr,
                &labels,
                &dir,
                listen,
                &state_dir,
                &allowed_roots,
            )?;
            print(out, json!({"agent": record, "bundle": dir}), || {
                format!(
                    "registered agent {name} at {addr}; bundle in {}\n\
                     on the host: copy it to /etc/slipway/ and run `slipd --config /etc/slipway/agent.toml`",
                    dir.display()
                )
            });
            Ok(0)
        }
        AgentCommand::List => {
            let agents = Store::open(&home.state())?.agents()?;
            home.client_tls()?; // a home without its identity says so, rather than every agent failing
            let results = crate::ops::agents::ask_info(home, agents).await;
            let issuing = joins::issuing_pin(home).unwrap_or_default();
            let rows: Vec<Vec<String>> = results
                .iter()
                .map(|(a, info)| {
                    let labels = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
                    let mut row = match (info, joins::trust_problem(a)) {
                        (_, Some(problem)) => {
                            vec![a.name.clone(), a.addr.clone(), labels, problem, "-".into(), "-".into()]
                        }
                        (Ok(i), None) => vec![
                            a.name.clone(),
                            a.addr.clone(),
                            labels,
                            if i.broken_targets.is_empty() {
                                "ok".into()
                            } else {
                                format!("ok; broken: {}", i.broken_targets.join("; "))
                            },
                            i.version.clone(),
                            millis(i.uptime_secs * 1000),
                        ],
                        (Err(e), None) => vec![
                            a.name.clone(),
                            a.addr.clone(),
                            labels,
                            format!("unreachable: {e}"),
                            "-".into(),
                            "-".into(),
                        ],
                    };
                    row.push(cert_cell(a, &issuing));
                    row
                })
                .collect();
            let docs: Vec<_> = results
                .iter()
                .map(|(a, info)| {
                    let mut doc = match info {
                        Ok(i) => json!({"name": a.name, "addr": a.addr, "labels": a.labels, "reachable": true,
                                        "version": i.version, "uptime_secs": i.uptime_secs, "hostname": i.hostname,
                                        "broken_targets": i.broken_targets}),
                        Err(e) => {
                            json!({"name": a.name, "addr": a.addr, "labels": a.labels, "reachable": false, "error": e})
                        }
                    };
                    doc["trust"] = json!(a.trust);
                    if let Some(problem) = joins::trust_problem(a) {
                        doc["problem"] = json!(problem);
                    }
                    doc
                })
                .collect();
            print(out, json!(docs), || {
                if rows.is_empty() {
                    "no agents; register one with `slipctl agent add NAME --addr HOST:PORT --out DIR`".into()
                } else {
                    table(&["NAME", "ADDR", "LABELS", "STATUS", "VERSION", "UPTIME", "CERT"], &rows)
                        .trim_end()
                        .to_owned()
                }
            });
            Ok(if results.iter().all(|(a, i)| i.is_ok() && joins::trust_problem(a).is_none()) { 0 } else { 1 })
        }
        AgentCommand::Rm { name } => {
            let store = Store::open(&home.state())?;
            // Which envs select this host by name or by its labels: they lose it.
            let agent = store.agent(&name)?;
            let mut users = Vec::new();
            if let Some(agent) = &agent {
                for p in store.projects()? {
                    let Ok(config) = ProjectConfig::parse(&p.text, &p.source_file.display().to_string()) else {
                        continue;
                    };
                    for (env, s) in &config.envs {
                        let picks = |sel: &slipway_common::config::HostSelector| match sel {
                            slipway_common::config::HostSelector::Name(n) => *n == agent.name,
                            slipway_common::config::HostSelector::Label { key, value } => {
                                agent.labels.get(key) == Some(value)
                            }
                        };
                        if s.hosts.iter().any(picks) {
                            users.push(format!("{}/{env}", p.name));
                        }
                    }
                }
            }
            if !store.remove_agent(&name)? {
                return Err(
                    CtlError::not_found(format!("unknown agent '{name}'")).fix("`slipctl agent list` shows them")
                );
            }
            joins::forget(&name, &by(out));
            if !users.is_empty() {
                crate::errln!(
                    out,
                    "warning: {} still select agent {name}: their deploys will fail on it until you take it out of \
                     their `hosts` (and `slipctl project apply`) or add it again",
                    users.join(", ")
                );
            }
            print(out, json!({"removed": name, "still_selected_by": users}), || format!("removed agent {name}"));
            Ok(0)
        }
        AgentCommand::Token(cmd) => token_command(home, out, cmd),
        AgentCommand::Evict { name } => {
            let record = joins::evict(&Store::open(&home.state())?, &name, &by(out))?;
            print(out, json!({"evicted": name, "trust": record.trust}), || {
                format!("evicted agent {name}: its certificate is refused from now on; it must join again")
            });
            Ok(0)
        }
        AgentCommand::Ban { name } => {
            joins::ban(&Store::open(&home.state())?, &name, &by(out))?;
            print(out, json!({"banned": name}), || {
                format!("banned agent {name}: evicted, and no join under that name until `slipctl agent unban {name}`")
            });
            Ok(0)
        }
        AgentCommand::Unban { name } => {
            joins::unban(&Store::open(&home.state())?, &name)?;
            print(out, json!({"unbanned": name}), || format!("{name} may join again (with a new token)"));
            Ok(0)
        }
    }
}

/// Who an action is recorded as.
fn by(out: &Cx) -> String {
    out.served_caller().unwrap_or_else(crate::engine::scope::current_user)
}

/// The CERT column: until when, and whether from an older CA (a rotation waits for it).
fn cert_cell(a: &AgentRecord, issuing: &str) -> String {
    match (a.trust.certs.last(), a.trust.not_after()) {
        (Some(c), Some(until)) => {
            let old = if c.ca_sha256 != issuing { " (old CA)" } else { "" };
            format!("until {}{old}", format_utc(until))
        }
        _ => "-".into(),
    }
}

fn token_command(home: &Home, out: &Cx, cmd: JoinTokenCommand) -> Result<u8> {
    let store = Store::open(&home.state())?;
    match cmd {
        JoinTokenCommand::Create { name, labels, ttl, addr, url } => {
            let (token, text) = joins::create_token(&store, &name, &labels, addr, ttl, &by(out))?;
            let pin = joins::ca_pin(home)?;
            let served_url = out.served.as_ref().and_then(|s| s.core.join_url.get().cloned());
            let known = url.or(served_url);
            let url_shown = known.clone().unwrap_or_else(|| "https://CONTROLLER:PORT".into());
            let command = joins::join_command(&url_shown, &text, &pin);
            let doc = json!({"id": token.id, "name": name, "token": text, "ca_sha256": pin,
                             "expires_at": token.expires_at, "command": command, "url": known});
            print(out, doc, || {
                let mut s = format!(
                    "join token {} for {name} (used once; expires {})\non the host, as root:\n  {command}",
                    token.id,
                    format_utc(token.expires_at)
                );
                if known.is_none() {
                    s.push_str(
                        "\n(no server with --join-listen runs for this home: put its agents' endpoint URL in \
                         place of https://CONTROLLER:PORT, or pass --url)",
                    );
                }
                s
            });
        }
        JoinTokenCommand::List => {
            let tokens = store.join_tokens()?;
            let now = unix_now();
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    let state = match &t.used {
                        Some(u) => format!("used {} from {}", format_utc(u.at), u.by),
                        None if t.expires_at <= now => "expired".into(),
                        None => "unused".into(),
                    };
                    let labels = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
                    vec![t.id.clone(), t.name.clone(), labels, format_utc(t.expires_at), state, t.created.by.clone()]
                })
                .collect();
            let docs: Vec<_> = tokens
                .iter()
                .map(|t| {
                    json!({"id": t.id, "name": t.name, "labels": t.labels, "addr": t.addr,
                                "expires_at": t.expires_at, "used": t.used, "created": t.created})
                })
                .collect();
            print(out, json!(docs), || {
                if rows.is_empty() {
                    "no join tokens; `slipctl agent token create NAME` makes one".into()
                } else {
                    table(&["ID", "NAME", "LABELS", "EXPIRES", "STATE", "BY"], &rows).trim_end().to_owned()
                }
            });
        }
        JoinTokenCommand::Rm { id } => {
            joins::remove_token(&store, &id)?;
            print(out, json!({"removed": id}), || format!("removed join token {id}"));
        }
    }
    Ok(0)
}

/// `slipctl ca rotate [--finish [--force]]`.
pub(crate) fn ca_command(home: &Home, out: &Cx, cmd: CaCommand) -> Result<u8> {
    let CaCommand::Rotate { finish, force } = cmd;
    if !finish {
        let pin = home.begin_ca_rotation()?;
        print(out, json!({"rotating": true, "ca_sha256": pin}), || {
            format!(
                "a new CA (sha256 {pin}) issues from now on; both CAs are trusted.\nagents renew onto it on their \
                 own (at 70-90 % of their certificates' life); `slipctl agent list` shows who has (CERT without \
                 \"old CA\"), then `slipctl ca rotate --finish`.\njoin commands pin the old CA until then."
            )
        });
        return Ok(0);
    }
    let store = Store::open(&home.state())?;
    let waiting = joins::not_renewed_since_rotation(home, &store)?;
    if !waiting.is_empty() && !force {
        return Err(CtlError::busy(format!("agents still on the old CA: {}", waiting.join(", "))).fix(
            "wait for them to renew (`slipctl agent list` shows each one's CA), or --force: they must join again",
        ));
    }
    home.finish_ca_rotation()?;
    print(out, json!({"rotating": false, "left_behind": waiting}), || {
        "the rotation is done: the controller presents a certificate of the new CA and the old CA is no longer \
         trusted"
            .to_owned()
    });
    Ok(0)
}
