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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    slipway_common::telemetry::init("info");
    slipway_common::tls::install_crypto_provider();
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

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
