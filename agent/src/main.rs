//! `slipd`: parse arguments, start telemetry, load config, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use slipway_common::config::AgentConfig;

#[derive(Parser)]
#[command(name = "slipd", version, about = "Slipway agent: stages and activates releases on this host")]
struct Cli {
    /// Agent config file
    #[arg(long, global = true, default_value = "/etc/slipway/agent.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check the config, certificates and state dir, then exit
    CheckConfig,
    /// Join a controller with a one-time token: make this host's key, get its certificate,
    /// write --config and the pki files beside it
    #[command(
        after_help = "Example:\n  slipd join https://ctl.example:8443 --token 3f2a9c0d1e4b.8c… --ca-sha256 5e0f…\n  \
                            systemctl enable --now slipd\n\n\
                            The command is printed by `slipctl agent token create NAME` on the controller."
    )]
    Join {
        /// The controller's agents' endpoint (`slipctl serve --join-listen`)
        url: String,
        /// The one-time token, `<id>.<secret>`
        #[arg(long)]
        token: String,
        /// SHA-256 of the controller's CA: checked before the token is sent
        #[arg(long)]
        ca_sha256: String,
        /// `listen` in agent.toml: where the controller dials this agent
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: std::net::SocketAddr,
        /// `state_dir` in agent.toml
        #[arg(long, default_value = "/var/lib/slipway")]
        state_dir: PathBuf,
        /// `allowed_roots` in agent.toml (repeatable)
        #[arg(long = "allowed-root", default_value = "/data")]
        allowed_roots: Vec<PathBuf>,
        /// Replace this host's identity (agent.toml, agent.key) if it has one
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    slipway_common::telemetry::init("info");
    slipway_common::tls::install_crypto_provider();
    if let Some(Command::Join { url, token, ca_sha256, listen, state_dir, allowed_roots, force }) = cli.command {
        let args = slipway_agent::enroll::JoinArgs {
            url,
            token,
            ca_sha256,
            config: cli.config,
            listen,
            state_dir,
            allowed_roots,
            force,
        };
        return join(&args);
    }
    let config = match AgentConfig::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        return match slipway_agent::check_config(&config) {
            Ok(()) => {
                println!("{}: config ok (agent '{}', listen {})", cli.config.display(), config.name, config.listen);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}: {e:#}", cli.config.display());
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("slipd").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}; change `listen` in the config", config.listen))?;
        slipway_agent::run(config, listener, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn join(args: &slipway_agent::enroll::JoinArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(slipway_agent::enroll::join(args)) {
        Ok(joined) => {
            println!(
                "joined as agent '{}': certificate until {} (renewed by slipd on its own)\nwrote {} and the pki \
                 files beside it\nnext: systemctl enable --now slipd",
                joined.name,
                slipway_common::time::format_utc(joined.not_after),
                joined.config.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
