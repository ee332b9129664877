//! The commands of the team's server (DESIGN.md "Server"): `serve`, users, tokens, tickets and
//! webhook secrets, as clap reads them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct ServeArgs {
    /// Address for the HTTP API, webhooks and metrics
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The URL people reach the server at, for links in notifications [default: from --listen]
    #[arg(long)]
    pub public_url: Option<String>,
    /// Address of the agents' endpoint, where hosts join (`slipd join`) and renew their
    /// certificates (HTTPS with the controller's own CA) [default: none, no joining]
    #[arg(long)]
    pub join_listen: Option<SocketAddr>,
    /// The URL hosts reach the agents' endpoint at, for the printed `slipd join` command
    /// [default: https://<--public-url's host>:<--join-listen's port>]
    #[arg(long, requires = "join_listen")]
    pub join_url: Option<String>,
    /// How long a joined agent's certificate lasts; it renews at 70–90 % of it
    #[arg(long, default_value = "10d", value_parser = slipway_common::time::parse_duration)]
    pub agent_cert_ttl: std::time::Duration,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user (a one-time password is printed unless --password-stdin)
    #[command(
        after_help = "Examples:\n  slipctl user add alice\n  echo \"$PW\" | slipctl user add ops --admin --password-stdin"
    )]
    Add {
        /// The login name
        name: String,
        /// May manage users, agents, projects and tokens, and act on every project and env
        #[arg(long)]
        admin: bool,
        /// Read the password from stdin (one line) instead of generating one
        #[arg(long)]
        password_stdin: bool,
    },
    /// Give a user a new password (a one-time one is printed unless --password-stdin); their
    /// sessions end
    #[command(
        after_help = "Examples:\n  slipctl user passwd alice\n  echo \"$PW\" | slipctl user passwd alice --password-stdin\n\n\
                            Users change their own password on the web page /account (or POST /api/v1/me/password)."
    )]
    Passwd {
        /// The login name
        name: String,
        /// Read the password from stdin (one line) instead of generating one
        #[arg(long)]
        password_stdin: bool,
    },
    /// Give a user a role on one exact project and env
    #[command(after_help = "Example:\n  slipctl user grant alice web-demo prod deployer\n\n\
                            Roles: viewer (sees), deployer (tickets, deploy, rollback, cancel), approver (approves\n\
                            or rejects the tickets of others). A grant holds for that (project, env) pair only.")]
    Grant {
        /// The user
        name: String,
        /// The project
        project: String,
        /// The environment of the project
        env: String,
        /// viewer, deployer or approver
        role: String,
    },
    /// Take a role on a project and env away
    #[command(after_help = "Example:\n  slipctl user revoke alice web-demo prod deployer")]
    Revoke {
        /// The user
        name: String,
        /// The project
        project: String,
        /// The environment of the project
        env: String,
        /// viewer, deployer or approver
        role: String,
    },
    /// Users and their grants
    #[command(after_help = "Example:\n  slipctl user list")]
    List,
    /// Remove a user (and end their sessions)
    #[command(after_help = "Example:\n  slipctl user rm alice")]
    Rm {
        /// The user
        name: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make an API token (shown once, stored hashed) for CI or a remote slipctl
    #[command(after_help = "Examples:\n  slipctl token create ci --scope web-demo:test:deployer\n  \
                            slipctl token create ops-laptop --admin")]
    Create {
        /// A name for the token (its callers appear as token:NAME)
        name: String,
        /// PROJECT:ENV:ROLE it may act as (repeat for more)
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Acts as an admin
        #[arg(long)]
        admin: bool,
    },
    /// Tokens (never their secrets)
    #[command(after_help = "Example:\n  slipctl token list")]
    List,
    /// Remove a token: it stops working at once
    #[command(after_help = "Example:\n  slipctl token rm 3f9a1c2e")]
    Rm {
        /// The token's id, as `slipctl token list` shows it
        id: String,
    },
}

#[derive(Subcommand)]
pub enum TicketCommand {
    /// Make a deploy ticket: the ref resolves to a commit now (or the build to promote is pinned)
    #[command(after_help = "Examples:\n  slipctl ticket create web-demo prod --ref v1.4 --title \"checkout fix\"\n  \
                      slipctl ticket create web-demo prod --from test --title \"promote test's release\"")]
    Create {
        /// The project
        project: String,
        /// The environment of the project
        env: String,
        /// Branch, tag or commit [default: the project's default_ref]
        #[arg(long = "ref")]
        git_ref: Option<String>,
        /// Promote the build ENV runs now (pinned when the ticket is made)
        #[arg(long, value_name = "ENV", conflicts_with_all = ["git_ref", "from_deploy", "artifact"])]
        from: Option<String>,
        /// Promote the build deploy DEPLOY_ID shipped
        #[arg(long, value_name = "DEPLOY_ID", conflicts_with_all = ["git_ref", "artifact"])]
        from_deploy: Option<u64>,
        /// Ship a pushed artifact
        #[arg(long, value_name = "NAME", conflicts_with = "git_ref")]
        artifact: Option<String>,
        /// What it ships, in a line
        #[arg(long)]
        title: String,
        /// More about it
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Tickets, newest first
    #[command(after_help = "Examples:\n  slipctl ticket list\n  slipctl ticket list --state pending")]
    List {
        /// Only this project
        #[arg(long)]
        project: Option<String>,
        /// Only this environment
        #[arg(long)]
        env: Option<String>,
        /// Only tickets in this state (pending, approved, deploying, succeeded, …)
        #[arg(long)]
        state: Option<String>,
    },
    /// One ticket: its commit, approvals, deploys and every change of state
    #[command(after_help = "Example:\n  slipctl ticket show 7")]
    Show {
        /// The ticket number
        id: u64,
    },
    /// Approve someone else's ticket
    #[command(after_help = "Example:\n  slipctl ticket approve 7 --comment \"looks good\"")]
    Approve {
        /// The ticket number
        id: u64,
        /// Why
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reject someone else's ticket
    #[command(after_help = "Example:\n  slipctl ticket reject 7 --comment \"not during the sale\"")]
    Reject {
        /// The ticket number
        id: u64,
        /// Why
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Deploy an approved ticket's commit and follow it
    #[command(after_help = "Example:\n  slipctl ticket deploy 7")]
    Deploy {
        /// The ticket number
        id: u64,
        /// Deploy outside the env's windows or in a freeze (admins); the reason is recorded
        #[arg(long, value_name = "TEXT")]
        override_reason: Option<String>,
    },
    /// Start an approved ticket at a time (within its env's windows), not after an expiry
    #[command(
        after_help = "Examples:\n  slipctl ticket schedule 7 --at \"2026-12-24 02:00 Asia/Shanghai\" --expires 6h\n  \
                            slipctl ticket schedule 7 --at 30m"
    )]
    Schedule {
        /// The ticket number
        id: u64,
        /// When: a duration from now (30m, 4h), RFC 3339, or \"YYYY-MM-DD HH:MM [Zone]\"
        #[arg(long)]
        at: String,
        /// Past this it does not start (same forms; a duration counts from --at)
        #[arg(long)]
        expires: Option<String>,
    },
    /// Take a ticket's schedule back (recorded on the ticket)
    #[command(after_help = "Example:\n  slipctl ticket unschedule 7")]
    Unschedule {
        /// The ticket number
        id: u64,
    },
    /// Cancel a ticket (a running deploy of it stops cleanly)
    #[command(after_help = "Example:\n  slipctl ticket cancel 7")]
    Cancel {
        /// The ticket number
        id: u64,
    },
    /// Take a ticket's deploy back: a rollback ticket, started at once unless its env wants approval
    #[command(after_help = "Example:\n  slipctl ticket rollback 7")]
    Rollback {
        /// The ticket number
        id: u64,
    },
}

#[derive(Subcommand)]
pub enum WebhookCommand {
    /// Show (or make) a project's webhook secret, for GitHub's and GitLab's webhook settings
    #[command(after_help = "Examples:\n  slipctl webhook secret web-demo\n  slipctl webhook secret web-demo --rotate")]
    Secret {
        /// The project
        project: String,
        /// Make a new one; the old one stops working
        #[arg(long)]
        rotate: bool,
    },
}

#[derive(Subcommand)]
pub enum StateCommand {
    /// Copy this home's state from sled into an empty PostgreSQL database, counts checked
    #[command(
        after_help = "Example:\n  slipctl state migrate --from sled --to postgres://slipway:PW@db.example/slipway\n  \
                            # then, with no slipctl running: [state] url = \"postgres://…\" in <home>/config.toml\n\n\
                            History, users, tickets, projects, agents and their journals move as they are; the \
                            sled files stay where they were."
    )]
    Migrate {
        /// Where the state is now (only `sled`)
        #[arg(long, value_parser = ["sled"])]
        from: String,
        /// The PostgreSQL database to copy it into (it must hold no Slipway state yet)
        #[arg(long)]
        to: String,
    },
}
