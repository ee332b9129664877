//! The command line, as clap reads it: every command, argument and option with its description,
//! an example per command, and the exit codes. `tests/help/` holds a snapshot of each `--help`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::cli::output::OutputFormat;

/// The exit codes, as a literal for `concat!` (examples first, then these, in `--help`).
macro_rules! exit_codes {
    () => {
        "\
Exit status:
  0  done
  1  the operation failed on some host (the output says which and why)
  2  bad input: usage, config, an unknown project, env, host, ref or release, or an agent
     refusing the target's paths or hook user (the message names the thing and the fix)
  3  busy: another deploy or rollback holds the project+env's lock (nothing was done)

With --output json, every outcome is one JSON document on stdout, errors included
({\"error\", \"fix\", \"kind\", \"exit_code\"}); --output jsonl streams events, one per line."
    };
}

macro_rules! top_examples {
    () => {
        "Examples:\n  slipctl quickstart                        a real demo on loopback, nothing to set up\n  \
         slipctl deploy web-demo prod --ref v1.4   ship tag v1.4 to every host of env prod"
    };
}
const TOP_EXAMPLES: &str = top_examples!();

macro_rules! deploy_examples {
    () => {
        "Examples:\n  slipctl deploy web-demo prod                  the project's default_ref\n  \
         slipctl deploy web-demo prod --ref v1.4 --dry-run\n  \
         slipctl deploy web-demo prod --hosts web-1   one host first\n  \
         slipctl deploy web-demo prod --retry-failed 12\n  \
         slipctl deploy web-demo prod --from test      the build test runs, with prod's layer\n  \
         slipctl deploy web-demo prod --from-deploy 12 the build deploy 12 shipped\n  \
         slipctl deploy web-demo test --artifact 1.4.2 a build CI pushed (slipctl artifact push)"
    };
}

macro_rules! rollback_examples {
    () => {
        "Examples:\n  slipctl rollback web-demo prod             back to the release before the current one\n  \
         slipctl rollback web-demo prod --to #12     what deploy 12 shipped\n  \
         slipctl rollback web-demo prod --to v1.3    a tag (or a commit prefix, or a release id)\n\n\
         A rollback runs the hook stages of [target] rollback_hooks (default post_release) with\n\
         the lines recorded with the release it restores."
    };
}

#[derive(Parser)]
#[command(
    name = "slipctl",
    version,
    about = "Slipway: deploy a git repository to a fleet of web hosts, and take it back",
    after_help = TOP_EXAMPLES,
    after_long_help = concat!(top_examples!(), "\n\n", exit_codes!())
)]
pub struct Cli {
    /// Controller home: pki/, state/, cache/ [default: ~/.local/share/slipway]
    #[arg(long, global = true, env = "SLIPWAY_HOME")]
    pub home: Option<PathBuf>,
    /// Output for people (text), scripts (json: one document) or streams (jsonl: events, then the result)
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Send the command to this `slipctl serve` (with SLIPWAY_TOKEN) [default: the home's own server, when it runs;
    /// there SLIPWAY_USER names the Slipway user you act as, for records and approvals]
    #[arg(long, global = true, env = "SLIPWAY_SERVER")]
    pub server: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create the CA and the controller identity in the home (again: a no-op)
    #[command(
        after_help = "Example:\n  slipctl init\n\nRun again on a home that has its CA, it changes nothing and exits 0."
    )]
    Init,
    /// Register, list and remove agents
    #[command(
        subcommand,
        after_help = "Examples:\n  slipctl agent add web-1 --addr 10.0.0.11:7443 --label role=web --out ./web-1\n  \
                      slipctl agent list"
    )]
    Agent(AgentCommand),
    /// Where the controller keeps its state (sled or PostgreSQL)
    #[command(
        subcommand,
        after_help = "Example:\n  slipctl state migrate --from sled --to postgres://slipway@db/slipway"
    )]
    State(super::args_team::StateCommand),
    /// The controller's certificate authority
    #[command(subcommand, after_help = "Example:\n  slipctl ca rotate")]
    Ca(super::args_agents::CaCommand),
    /// Apply, list, show and remove projects
    #[command(
        subcommand,
        after_help = "Examples:\n  slipctl project apply -f web-demo.toml\n  slipctl project show web-demo"
    )]
    Project(ProjectCommand),
    /// Builds made by CI, kept by name and shipped by `deploy --artifact NAME`
    #[command(
        subcommand,
        after_help = "Examples:\n  slipctl artifact push shop target/shop.war --name 1.4.2 --commit 3f2a91c\n  slipctl artifact list shop"
    )]
    Artifact(crate::cli::artifacts::ArtifactCommand),
    /// Deploy freezes of a project's env: no deploy until they end (rollbacks go on)
    #[command(
        subcommand,
        after_help = "Examples:\n  slipctl freeze create shop prod --until 3d --reason \"Double 11\"\n  slipctl freeze list"
    )]
    Freeze(crate::cli::governance::FreezeCommand),
    /// Maintenance mode: a page the web server serves instead of the app, on every host
    #[command(
        subcommand,
        after_help = "Examples:\n  slipctl maintenance on shop prod --message \"Back at 22:00\"\n  slipctl maintenance off shop prod"
    )]
    Maintenance(crate::cli::governance::MaintenanceCommand),
    /// The paths a project's builds keep between them ([build] cache)
    #[command(subcommand, after_help = "Example:\n  slipctl cache clear shop")]
    Cache(crate::cli::artifacts::CacheCommand),
    /// Deploy a ref of a project to an environment
    #[command(
        after_help = deploy_examples!(),
        after_long_help = concat!(deploy_examples!(), "\n\n", exit_codes!())
    )]
    Deploy {
        /// The project, as `slipctl project list` names it
        project: String,
        /// The environment of the project (an [env.NAME] table of its file)
        env: String,
        /// Branch, tag or commit [default: the project's default_ref]
        #[arg(long = "ref")]
        git_ref: Option<String>,
        /// Only these hosts of the environment (comma-separated)
        #[arg(long, value_delimiter = ',')]
        hosts: Option<Vec<String>>,
        /// Resolve and package, print the plan, send nothing
        #[arg(long)]
        dry_run: bool,
        /// Send the whole artifact, even to hosts that already hold most files
        #[arg(long)]
        full: bool,
        /// Ship deploy DEPLOY_ID's release again (same release, same commit) to the hosts it did
        /// not reach: failed, rolled back, or never contacted
        #[arg(long, value_name = "DEPLOY_ID", conflicts_with_all = ["git_ref", "hosts", "from", "from_deploy", "artifact"])]
        retry_failed: Option<u64>,
        /// Ship the build ENV runs now (no checkout, no build), with this env's config_dir and
        /// vars on top: the same build digest in both envs
        #[arg(long, value_name = "ENV", conflicts_with_all = ["git_ref", "from_deploy", "artifact"])]
        from: Option<String>,
        /// Ship the build deploy DEPLOY_ID shipped, with this env's layer on top
        #[arg(long, value_name = "DEPLOY_ID", conflicts_with_all = ["git_ref", "artifact"])]
        from_deploy: Option<u64>,
        /// Ship a build CI pushed (`slipctl artifact push`), with this env's layer on top
        #[arg(long, value_name = "NAME", conflicts_with = "git_ref")]
        artifact: Option<String>,
        /// Deploy outside the env's windows or in a freeze (admins); the reason is recorded
        #[arg(long, value_name = "TEXT")]
        override_reason: Option<String>,
        /// Do not run [target] migrate (a re-deploy of what already ran it)
        #[arg(long)]
        skip_migrate: bool,
    },
    /// Relink every host to its previous release (or --to one), then run post_release there
    #[command(
        after_help = rollback_examples!(),
        after_long_help = concat!(rollback_examples!(), "\n\n", exit_codes!())
    )]
    Rollback {
        /// The project, as `slipctl project list` names it
        project: String,
        /// The environment of the project
        env: String,
        /// Where to go: a release id (as `slipctl releases` shows), a deploy number (#12), a tag,
        /// or a commit prefix; the release must be retained on every host
        #[arg(long)]
        to: Option<String>,
        /// Only these hosts of the environment (comma-separated)
        #[arg(long, value_delimiter = ',')]
        hosts: Option<Vec<String>>,
    },
    /// Carry on a deploy paused after its canary: the other hosts follow
    #[command(after_help = "Example:\n  slipctl promote 12\n\n\
                            Works from any process: if the slipctl that waited is gone, this one carries the deploy on.")]
    Promote {
        /// The paused deploy's number
        deploy_id: u64,
    },
    /// Stop a deploy paused after its canary: the canary goes back, the other hosts are not touched
    #[command(after_help = "Example:\n  slipctl abort 12")]
    Abort {
        /// The paused deploy's number
        deploy_id: u64,
    },
    /// Per host: retained releases, which is current, and why each is kept
    #[command(after_help = "Example:\n  slipctl releases web-demo prod\n\n\
                            keep_releases counts releases that were activated and not rolled back from; the\n\
                            rollback target is kept beyond it. Pruning runs after a rollout succeeded.")]
    Releases {
        /// The project
        project: String,
        /// The environment of the project
        env: String,
    },
    /// Before deploying: hosts reachable, certificates, user, paths, hook programs, disk, the ref
    #[command(after_help = "Examples:\n  slipctl check web-demo prod\n  slipctl check web-demo prod --ref v1.4")]
    Check {
        /// The project
        project: String,
        /// The environment of the project
        env: String,
        /// The branch, tag or commit to check [default: the project's default_ref]
        #[arg(long = "ref")]
        git_ref: Option<String>,
    },
    /// Remove the deploy lock of a project+env whose holder is gone
    #[command(
        after_help = "Example:\n  slipctl unlock web-demo prod\n\nA lock held by a live process is never removed."
    )]
    Unlock {
        /// The project
        project: String,
        /// The environment of the project
        env: String,
    },
    /// Past deploys and rollbacks, newest first
    #[command(after_help = "Examples:\n  slipctl history\n  slipctl history web-demo prod --limit 5")]
    History {
        /// Only this project
        project: Option<String>,
        /// Only this environment of the project
        env: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Steps, timings, hook output and errors of one deploy or rollback, per host
    #[command(after_help = "Example:\n  slipctl show 12")]
    Show {
        /// The deploy number, as `slipctl history` shows it
        deploy_id: u64,
    },
    /// Run the controller as the team's server: HTTP API, webhooks, metrics, the local socket
    #[command(
        after_help = "Examples:\n  slipctl serve\n  slipctl serve --listen 0.0.0.0:8443 --tls-cert server.pem --tls-key server.key\n\n\
                            While it runs, every slipctl command given this home goes through it (its socket\n\
                            <home>/slipctl.sock, mode 0600). SIGTERM stops running deploys cleanly first."
    )]
    Serve(super::args_team::ServeArgs),
    /// Users of the server and their roles per project and env
    #[command(
        subcommand,
        after_help = "Examples:\n  slipctl user add alice\n  slipctl user grant alice web-demo test deployer"
    )]
    User(super::args_team::UserCommand),
    /// API tokens for CI and remote slipctl (SLIPWAY_TOKEN)
    #[command(subcommand, after_help = "Example:\n  slipctl token create ci --scope web-demo:test:deployer")]
    Token(super::args_team::TokenCommand),
    /// Deploy tickets (上线单): create, approve, deploy, roll back — through the server
    #[command(
        subcommand,
        after_help = "Examples:\n  slipctl ticket create web-demo prod --ref v1.4 --title \"checkout fix\"\n  slipctl ticket approve 7"
    )]
    Ticket(super::args_team::TicketCommand),
    /// Webhook secrets for CI (GitHub, GitLab)
    #[command(subcommand, after_help = "Example:\n  slipctl webhook secret web-demo")]
    Webhook(super::args_team::WebhookCommand),
    /// A real demo on loopback: a CA, three agents, a git repo, two deploys and a rollback
    #[command(
        after_help = "Examples:\n  slipctl quickstart --dir /tmp/slipway-demo\n  slipctl quickstart --serve          # then open http://127.0.0.1:8080"
    )]
    Quickstart {
        /// Where to put the demo [default: a new temporary directory]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Then keep the demo's agents running and serve it in a browser (an admin with a
        /// one-time password is made); Ctrl-C stops it all
        #[arg(long)]
        serve: bool,
        /// With --serve: where the server listens (port 0: any free one)
        #[arg(long, default_value = "127.0.0.1:8080", requires = "serve")]
        listen: std::net::SocketAddr,
    },
}

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Register an agent and write its ready-to-run bundle (ca.pem, agent.pem, agent.key, agent.toml)
    #[command(
        after_help = "Example:\n  slipctl agent add web-1 --addr 10.0.0.11:7443 --label role=web --out ./web-1\n  \
                            # copy ./web-1 to the host's /etc/slipway/, then: systemctl enable --now slipd"
    )]
    Add {
        /// The agent's name: its certificate says it, and project files select it by it
        name: String,
        /// Where the controller reaches the agent (HOST:PORT)
        #[arg(long)]
        addr: String,
        /// Labels for host selectors, key=value (repeatable)
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Directory for the bundle (must not hold an agent.key)
        #[arg(long)]
        out: PathBuf,
        /// `listen` in agent.toml [default: 0.0.0.0:<port of --addr>]
        #[arg(long)]
        listen: Option<String>,
        /// `state_dir` in agent.toml
        #[arg(long, default_value = "/var/lib/slipway")]
        state_dir: PathBuf,
        /// `allowed_roots` in agent.toml (repeatable)
        #[arg(long = "allowed-root", default_value = "/data")]
        allowed_roots: Vec<PathBuf>,
    },
    /// Registered agents: reachable or why not, version, uptime
    #[command(after_help = "Example:\n  slipctl agent list")]
    List,
    /// Forget an agent (warns when a project still selects it)
    #[command(after_help = "Example:\n  slipctl agent rm web-3\n\n\
                            Its releases stay on the host; slipd there keeps running until you stop it.")]
    Rm {
        /// The agent's name
        name: String,
    },
    /// One-time join tokens: hosts join by themselves with `slipd join`
    #[command(subcommand, after_help = "Example:\n  slipctl agent token create web-7 --label role=web")]
    Token(super::args_agents::JoinTokenCommand),
    /// Refuse an agent's certificate at once: no more calls to it, no renewal; it must join again
    #[command(after_help = "Example:\n  slipctl agent evict web-7")]
    Evict {
        /// The agent's name
        name: String,
    },
    /// Evict an agent and refuse any future join under that name
    #[command(after_help = "Example:\n  slipctl agent ban web-7\n  slipctl agent unban web-7   # it may join again")]
    Ban {
        /// The agent's name
        name: String,
    },
    /// Lift a ban: the name may join again (with a new token)
    #[command(after_help = "Example:\n  slipctl agent unban web-7")]
    Unban {
        /// The agent's name
        name: String,
    },
}

#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Validate and store a project file
    #[command(after_help = "Example:\n  slipctl project apply -f web-demo.toml")]
    Apply {
        /// The project file (TOML; see deploy/web-demo.toml)
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Every project: repository and environments
    #[command(after_help = "Example:\n  slipctl project list")]
    List,
    /// The project's settings as each environment resolves them, and the hosts each selects
    #[command(after_help = "Example:\n  slipctl project show web-demo")]
    Show {
        /// The project
        name: String,
    },
    /// Forget a project (its releases stay on the hosts)
    #[command(after_help = "Example:\n  slipctl project rm web-demo")]
    Rm {
        /// The project
        name: String,
    },
    /// Every saved revision of the project file: number, who, when, what it was
    #[command(after_help = "Example:\n  slipctl project history web-demo")]
    History {
        /// The project
        name: String,
    },
    /// What changed between two revisions of the project file (a unified diff)
    #[command(after_help = "Example:\n  slipctl project diff web-demo 3 4")]
    Diff {
        /// The project
        name: String,
        /// The older revision
        from: u64,
        /// The newer revision
        to: u64,
    },
    /// Save an earlier revision again as the newest (the next deploy runs with it)
    #[command(after_help = "Example:\n  slipctl project revert web-demo 3")]
    Revert {
        /// The project
        name: String,
        /// The revision to go back to
        revision: u64,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every command has an example and every argument a description: a missing one fails here.
    #[test]
    fn every_command_and_argument_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if !cmd.get_after_help().is_some_and(|h| h.to_string().contains("Example")) {
                missing.push(format!("{path}: no example"));
            }
            if cmd.get_about().is_none() {
                missing.push(format!("{path}: no description"));
            }
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() && !["help", "version"].contains(&arg.get_id().as_str()) {
                    missing.push(format!("{path} {}: no description", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        let cmd = Cli::command();
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, "slipctl", &mut missing);
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
        assert!(cmd.get_after_long_help().is_some_and(|h| h.to_string().contains("3  busy")));
    }
}
