//! `slipctl freeze create|list|rm` (`ops::freezes`): no deploy of a project's env until a freeze
//! ends; rollbacks go on. Windows are the env's `windows` key; both are checked by
//! `engine::policy`.

use clap::Subcommand;
use serde_json::json;
use slipway_common::time::{format_utc, parse_when, unix_now};

use crate::cli::output::table;
use crate::cli::{Cx, print};
use crate::error::{CtlError, Result};
use crate::ops::freezes;
use crate::state::freezes::Freeze;
use crate::state::home::Home;

#[derive(Subcommand)]
pub enum FreezeCommand {
    /// Freeze an env: deploys and tickets' deploys are refused (admins may override with a
    /// reason); webhook tickets wait and start after it
    #[command(after_help = "Examples:\n  slipctl freeze create shop prod --until 3d --reason \"Double 11\"\n  \
        slipctl freeze create shop prod --from \"2026-12-24 00:00 Asia/Shanghai\" --until \"2026-12-26 00:00 Asia/Shanghai\" --reason \"Christmas\"")]
    Create {
        /// The project
        project: String,
        /// The environment
        env: String,
        /// When it ends: a duration from now (4h, 3d), RFC 3339, or "YYYY-MM-DD HH:MM [Zone]"
        #[arg(long)]
        until: String,
        /// When it starts (the same forms) [default: now]
        #[arg(long)]
        from: Option<String>,
        /// Why (shown to whoever is refused)
        #[arg(long)]
        reason: String,
    },
    /// Freezes not yet over
    #[command(after_help = "Example:\n  slipctl freeze list shop")]
    List {
        /// Only this project's
        project: Option<String>,
    },
    /// Lift a freeze now (its record stays)
    #[command(after_help = "Example:\n  slipctl freeze rm 3")]
    Rm {
        /// The freeze's number, as `slipctl freeze list` shows it
        id: u64,
    },
}

#[derive(Subcommand)]
pub enum MaintenanceCommand {
    /// Put up every host's maintenance page (<deploy_to>/maintenance.html), which the web
    /// server serves instead of the app (README: nginx and HAProxy)
    #[command(after_help = "Example:\n  slipctl maintenance on shop prod --message \"Back at 22:00\"")]
    On {
        /// The project
        project: String,
        /// The environment
        env: String,
        /// Shown on the page
        #[arg(long, default_value = "")]
        message: String,
    },
    /// Take every host's maintenance page down
    #[command(after_help = "Example:\n  slipctl maintenance off shop prod")]
    Off {
        /// The project
        project: String,
        /// The environment
        env: String,
    },
}

pub(crate) async fn maintenance_command(home: &Home, out: &Cx, cmd: MaintenanceCommand) -> Result<u8> {
    let (project, env, on, message) = match cmd {
        MaintenanceCommand::On { project, env, message } => (project, env, true, message),
        MaintenanceCommand::Off { project, env } => (project, env, false, String::new()),
    };
    let answers = crate::engine::maintenance::set(home, &out.actor(), &project, &env, on, &message).await?;
    let failed = answers.iter().filter(|(_, a)| a.is_err()).count();
    let doc = crate::engine::maintenance::answers_json(&project, &env, on, &answers);
    print(out, doc, || {
        let mut s = format!("maintenance {} for {project}/{env}:", if on { "on" } else { "off" });
        for (host, a) in &answers {
            match a {
                Ok(r) if on => s.push_str(&format!("\n  {host}: {}", r.path)),
                Ok(r) => s.push_str(&format!("\n  {host}: {}", if r.was_on { "page removed" } else { "was off" })),
                Err(e) => s.push_str(&format!("\n  {host}: FAILED {e}")),
            }
        }
        s
    });
    Ok(if failed > 0 { 1 } else { 0 })
}

fn when(text: &str, now: i64) -> Result<i64> {
    parse_when(text, now).map_err(|e| CtlError::bad(e).fix("see `slipctl freeze create --help`"))
}

fn text(f: &Freeze) -> String {
    format!(
        "freeze {} of {}/{}: from {} until {} by {}: {}{}",
        f.id,
        f.project,
        f.env,
        format_utc(f.from),
        format_utc(f.until),
        f.by,
        f.reason,
        f.lifted.as_ref().map(|l| format!(" (lifted by {} at {})", l.by, format_utc(l.at))).unwrap_or_default()
    )
}

pub(crate) fn freeze_command(home: &Home, out: &Cx, cmd: FreezeCommand) -> Result<u8> {
    let store = out.store(home)?;
    let by = out.served_caller().unwrap_or_else(crate::engine::scope::current_user);
    match cmd {
        FreezeCommand::Create { project, env, until, from, reason } => {
            let now = unix_now();
            let from = from.map(|f| when(&f, now)).transpose()?;
            let until = when(&until, from.unwrap_or(now))?;
            let f = freezes::create(&store, &by, &project, &env, from, until, &reason)?;
            print(out, json!(f), || text(&f));
        }
        FreezeCommand::List { project } => {
            let list = freezes::list(&store, project.as_deref())?;
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|f| {
                    vec![
                        f.id.to_string(),
                        format!("{}/{}", f.project, f.env),
                        format_utc(f.from),
                        format_utc(f.until),
                        f.by.clone(),
                        f.reason.clone(),
                    ]
                })
                .collect();
            print(out, json!(list), || table(&["ID", "ENV", "FROM", "UNTIL", "BY", "REASON"], &rows));
        }
        FreezeCommand::Rm { id } => {
            let f = freezes::lift(&store, &by, id)?;
            print(out, json!(f), || text(&f));
        }
    }
    Ok(0)
}
