//! `slipd`, the Slipway agent: receives releases over mTLS gRPC, unpacks them safely into
//! `releases/.staging-<id>`, and flips `current` atomically when the controller says so.
//!
//! [`run`] takes a bound listener and a shutdown future, so tests and `main` start it alike.

pub mod error;
pub mod health;
pub mod hooks;
pub mod layout;
mod privdrop;
pub mod service;
pub mod shared;
pub mod state;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use slipway_common::config::AgentConfig;
use slipway_common::tls::{TlsMaterial, agent_server_config};
use slipway_proto::{MAX_MESSAGE_BYTES, pb};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

pub use service::AgentService;
pub use state::AgentState;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `slipd check-config` verifies: the config, the TLS material and the state dir.
pub fn check_config(config: &AgentConfig) -> anyhow::Result<()> {
    let material = TlsMaterial::load(&config.tls)?;
    agent_server_config(&material).context("tls")?;
    // Check the state dir is writable without opening the store a running agent holds.
    let dir = &config.state_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("state_dir {}", dir.display()))?;
    let probe = dir.join(format!(".check-config-{}", std::process::id()));
    std::fs::write(&probe, b"ok").with_context(|| format!("state_dir {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    for root in &config.allowed_roots {
        if !root.is_dir() {
            warn!(root = %root.display(), "allowed root does not exist yet; deploys will create it");
        }
    }
    Ok(())
}

/// Serve until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let material = TlsMaterial::load(&config.tls)?;
    let acceptor = TlsAcceptor::from(agent_server_config(&material)?);
    let state = AgentState::open(&config.state_dir)?;
    let service = AgentService::new(config.clone(), state);
    service.reconcile().context("reconcile state with the filesystem")?;

    let local = listener.local_addr()?;
    info!(name = %config.name, addr = %local, version = slipway_common::VERSION, "slipd listening");
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel(64);
    let accept_loop = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let conn_tx = conn_tx.clone();
            // Handshakes run on their own tasks so a slow or hostile peer cannot stall accept.
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        debug!(%peer, "controller connected");
                        let _ = conn_tx.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                    Ok(Err(e)) => warn!(%peer, error = %e, "tls handshake refused"),
                    Err(_) => warn!(%peer, "tls handshake timed out"),
                }
            });
        }
    });

    let result = tonic::transport::Server::builder()
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(
            pb::agent_server::AgentServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), shutdown)
        .await;
    accept_loop.abort();
    info!("slipd stopped");
    result.context("grpc server")
}
