//! `slipctl project …`: apply a project file (a new revision), list, show, remove, and the
//! revisions: history, diff, revert (`ops::projects`).

use std::collections::BTreeMap;

use serde_json::json;
use slipway_common::config::ProjectConfig;
use slipway_common::time::format_utc;

use crate::cli::args::ProjectCommand;
use crate::cli::output::{clean, table};
use crate::cli::{Cx, print};
use crate::error::{Context, CtlError, Result};
use crate::ops::projects;
use crate::state::home::Home;
use crate::state::store::Store;

pub(crate) fn project_command(home: &Home, out: &Cx, cmd: ProjectCommand) -> Result<u8> {
    match cmd {
        ProjectCommand::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CtlError::bad(format!("cannot read project file {}: {e}", file.display())))?;
            let config = ProjectConfig::parse(&text, &file.display().to_string())?;
            let file = std::path::absolute(&file).context("project file path")?;
            let store = Store::open(&home.state())?;
            let by = out.served_caller().unwrap_or_else(crate::engine::scope::current_user);
            let save = crate::ops::projects::Save {
                text: &text,
                source_file: &file,
                by: &by,
                base: None,
                create: false,
                note: "",
            };
            let (record, revision) = projects::save(&store, save)?;
            // Hosts named that are not registered: the project applies (the agent may be added
            // later), but a deploy will refuse until they are.
            let agents = store.agents()?;
            let mut unknown = Vec::new();
            for (env, s) in &config.envs {
                for sel in &s.hosts {
                    if let slipway_common::config::HostSelector::Name(n) = sel
                        && !agents.iter().any(|a| a.name == *n)
                    {
                        unknown.push(format!("{n} (env {env})"));
                    }
                }
            }
            if !unknown.is_empty() {
                crate::errln!(
                    out,
                    "warning: not registered agents: {}; register them with `slipctl agent add NAME --addr \
                     HOST:PORT --out DIR` before deploying",
                    unknown.join(", ")
                );
            }
            let envs: Vec<_> = config.envs.keys().cloned().collect();
            let doc =
                json!({"project": record.name, "envs": envs, "unregistered_hosts": unknown, "revision": revision.n});
            print(out, doc, || {
                format!("project {} applied as revision {} (envs: {})", record.name, revision.n, envs.join(", "))
            });
            Ok(0)
        }
        ProjectCommand::List => {
            let projects = Store::open(&home.state())?.projects()?;
            // Through the server, a caller sees the projects and envs their grants show them;
            // the project file's path is for admins. Repository URLs never carry credentials.
            let caller = out.served.as_ref().map(|s| s.caller.clone());
            let sees =
                |p: &str, e: &str| caller.as_ref().is_none_or(|c| c.allows(p, e, crate::state::users::Role::Viewer));
            let admin = caller.as_ref().is_none_or(|c| c.admin);
            let mut rows = Vec::new();
            let mut docs = Vec::new();
            for p in &projects {
                let parsed = ProjectConfig::parse(&p.text, &p.source_file.display().to_string());
                let (repo, envs) = match &parsed {
                    Ok(c) => (
                        c.envs.values().next().map(|e| e.repo.clone()).unwrap_or_default(),
                        c.envs.keys().filter(|e| sees(&p.name, e)).cloned().collect::<Vec<_>>(),
                    ),
                    Err(e) if admin => (format!("invalid: {e}"), vec![]),
                    Err(_) => continue,
                };
                if envs.is_empty() && !admin {
                    continue;
                }
                let repo = slipway_common::redact::redact(&repo).into_owned();
                rows.push(vec![p.name.clone(), repo.clone(), envs.join(","), format_utc(p.applied_at)]);
                let mut doc = json!({"name": p.name, "repo": repo, "envs": envs});
                if admin {
                    doc["source_file"] = json!(p.source_file);
                }
                docs.push(doc);
            }
            print(out, json!(docs), || {
                if rows.is_empty() {
                    "no projects; add one with `slipctl project apply -f FILE`".into()
                } else {
                    table(&["NAME", "REPO", "ENVS", "APPLIED"], &rows).trim_end().to_owned()
                }
            });
            Ok(0)
        }
        ProjectCommand::Show { name } => {
            let p = Store::open(&home.state())?.project(&name)?.ok_or_else(|| {
                CtlError::not_found(format!("unknown project '{name}'")).fix("`slipctl project list` shows them")
            })?;
            let config = ProjectConfig::parse(&p.text, &p.source_file.display().to_string())?;
            // The hosts each env selects now, by name (or why it selects none).
            let agents = Store::open(&home.state())?.agents()?;
            let selected: BTreeMap<&String, std::result::Result<Vec<String>, String>> = config
                .envs
                .iter()
                .map(|(env, s)| {
                    let hosts = crate::engine::select::select_hosts(&p.name, env, &s.hosts, &agents, None)
                        .map(|a| a.into_iter().map(|a| a.name).collect())
                        .map_err(|e| e.to_string());
                    (env, hosts)
                })
                .collect();
            let hosts_doc: BTreeMap<&String, serde_json::Value> = selected
                .iter()
                .map(|(env, h)| (*env, h.as_ref().map_or_else(|e| json!({"error": e}), |names| json!(names))))
                .collect();
            let mut envs = json!(config.envs);
            if let Some(map) = envs.as_object_mut() {
                for env in map.values_mut() {
                    if let Some(repo) = env["repo"].as_str() {
                        env["repo"] = json!(slipway_common::redact::redact(repo));
                    }
                }
            }
            let doc = json!({"name": p.name, "source_file": p.source_file, "envs": envs, "hosts": hosts_doc});
            print(out, doc.clone(), || {
                let mut text = format!("# {} (from {})\n", p.name, p.source_file.display());
                for (env, hosts) in &selected {
                    match hosts {
                        Ok(names) => {
                            text.push_str(&format!("# env {env}: {} host(s): {}\n", names.len(), names.join(", ")))
                        }
                        Err(e) => text.push_str(&format!("# env {env}: {e}\n")),
                    }
                }
                text.push_str(&toml_of(&doc["envs"]));
                text
            });
            Ok(0)
        }
        ProjectCommand::History { name } => {
            let store = Store::open(&home.state())?;
            store.project(&name)?.ok_or_else(|| {
                CtlError::not_found(format!("unknown project '{name}'")).fix("`slipctl project list` shows them")
            })?;
            let revisions = store.revisions(&name)?;
            let rows: Vec<Vec<String>> = revisions
                .iter()
                .map(|r| vec![r.n.to_string(), clean(&r.by), format_utc(r.at), clean(&r.note)])
                .collect();
            let docs: Vec<_> =
                revisions.iter().map(|r| json!({"revision": r.n, "by": r.by, "at": r.at, "note": r.note})).collect();
            print(out, json!(docs), || {
                if rows.is_empty() {
                    format!("{name} has no revisions yet (applied before they were kept); the next apply is revision 2")
                } else {
                    table(&["REVISION", "BY", "AT", "NOTE"], &rows).trim_end().to_owned()
                }
            });
            Ok(0)
        }
        ProjectCommand::Diff { name, from, to } => {
            let store = Store::open(&home.state())?;
            let (a, b) = (projects::revision(&store, &name, from)?, projects::revision(&store, &name, to)?);
            let (a_text, b_text) = (projects::masked(&a.text), projects::masked(&b.text));
            let diff = projects::diff(&a_text, &b_text, &format!("revision {from}"), &format!("revision {to}"));
            print(out, json!({"project": name, "from": from, "to": to, "diff": diff}), || {
                if diff.is_empty() {
                    format!("revisions {from} and {to} are the same")
                } else {
                    diff.trim_end().to_owned()
                }
            });
            Ok(0)
        }
        ProjectCommand::Revert { name, revision } => {
            let store = Store::open(&home.state())?;
            let by = out.served_caller().unwrap_or_else(crate::engine::scope::current_user);
            let (_, saved) = projects::revert(&store, &name, revision, &by)?;
            print(out, json!({"project": name, "revision": saved.n, "reverted_to": revision}), || {
                format!("{name}: revision {} is revision {revision} again; the next deploy runs with it", saved.n)
            });
            Ok(0)
        }
        ProjectCommand::Rm { name } => {
            if !Store::open(&home.state())?.remove_project(&name)? {
                return Err(
                    CtlError::not_found(format!("unknown project '{name}'")).fix("`slipctl project list` shows them")
                );
            }
            print(out, json!({"removed": name}), || format!("removed project {name}"));
            Ok(0)
        }
    }
}

fn toml_of(value: &serde_json::Value) -> String {
    let wrapped = json!({ "env": value });
    toml::to_string(&wrapped).unwrap_or_else(|_| serde_json::to_string_pretty(value).unwrap_or_default())
}
