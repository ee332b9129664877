//! `slipd`, the Slipway agent: receives releases over mTLS gRPC, unpacks them safely into
//! `releases/.staging-<id>`, and flips `current` atomically when the controller says so.
//!
//! [`run`] takes a bound listener and a shutdown future, so tests and `main` start it alike.

pub mod beneath;
pub mod enroll;
pub mod error;
pub mod fetch;
pub mod health;
pub mod hooks;
pub mod kept;
pub mod layout;
pub mod metrics;
pub mod preflight;
mod privdrop;
pub mod receive;
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

/// How long a peer has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Handshakes in progress at once, and from one address: past that, new connections are closed
/// at once, so a flood of idle connections cannot exhaust file descriptors or stall the controller.
const MAX_PENDING_HANDSHAKES: usize = 256;
const MAX_PENDING_PER_ADDRESS: usize = 16;

/// Handshakes in progress, in total and per peer address.
#[derive(Default)]
struct Pending {
    total: usize,
    by_addr: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// A claimed handshake slot, given back on drop.
struct PendingSlot {
    pending: std::sync::Arc<std::sync::Mutex<Pending>>,
    addr: std::net::IpAddr,
}

impl PendingSlot {
    fn claim(pending: &std::sync::Arc<std::sync::Mutex<Pending>>, addr: std::net::IpAddr) -> Option<PendingSlot> {
        let mut p = pending.lock().expect("pending lock");
        let here = p.by_addr.get(&addr).copied().unwrap_or(0);
        if p.total >= MAX_PENDING_HANDSHAKES || here >= MAX_PENDING_PER_ADDRESS {
            return None;
        }
        p.total += 1;
        *p.by_addr.entry(addr).or_default() += 1;
        Some(PendingSlot { pending: pending.clone(), addr })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut p = self.pending.lock().expect("pending lock");
        p.total -= 1;
        if let Some(n) = p.by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                p.by_addr.remove(&self.addr);
            }
        }
    }
}

/// Everything `slipd check-config` verifies: the config, the TLS material (and that the
/// certificate is this agent's, by name) and the state dir. It changes nothing: a missing
/// state dir is fine when slipd could create it at start.
pub fn check_config(config: &AgentConfig) -> anyhow::Result<()> {
    let material = TlsMaterial::load(&config.tls)?;
    agent_server_config(&material).context("the TLS files of agent.toml (tls.ca, tls.cert, tls.key)")?;
    let der = slipway_common::pki::first_cert_der(&material.cert_pem).context("tls.cert of agent.toml")?;
    let info = slipway_common::pki::cert_info(&der).context("tls.cert of agent.toml")?;
    let me = slipway_common::pki::Identity::Agent(config.name.clone());
    if !info.identities.contains(&me) {
        let holders: Vec<String> = info.identities.iter().map(|i| i.uri()).collect();
        anyhow::bail!(
            "name '{}' does not match the certificate {} (issued for {}); the controller dials this agent by \
             name: set name to the one the certificate was issued for, or issue a bundle for '{}' with \
             `slipctl agent add {} ...`",
            config.name,
            config.tls.cert.display(),
            if holders.is_empty() { "no agent".to_owned() } else { holders.join(", ") },
            config.name,
            config.name
        );
    }
    // Check the state dir without creating it or opening the store a running agent holds.
    let dir = &config.state_dir;
    let writable = |p: &std::path::Path| rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            anyhow::ensure!(writable(dir), "state_dir {} is not writable by slipd's user", dir.display());
        }
        Ok(_) => anyhow::bail!("state_dir {} is not a directory", dir.display()),
        Err(_) => {
            let parent = dir.ancestors().skip(1).find(|a| a.exists()).unwrap_or(std::path::Path::new("/"));
            anyhow::ensure!(
                writable(parent),
                "state_dir {} does not exist and {} is not writable, so slipd could not create it",
                dir.display(),
                parent.display()
            );
            warn!(state_dir = %dir.display(), "state dir does not exist yet; slipd creates it at start");
        }
    }
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
    let acceptor: enroll::SharedAcceptor =
        std::sync::Arc::new(std::sync::RwLock::new(TlsAcceptor::from(agent_server_config(&material)?)));
    let renewing = tokio::spawn(enroll::renew_forever(config.clone(), acceptor.clone()));
    slipway_common::process::raise_fd_limit();
    let state = AgentState::open(&config.state_dir)?;
    let service = AgentService::new(config.clone(), state);
    service.reconcile();
    let metrics = match config.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on {addr} for metrics: {e}; change `metrics_listen` in the config")
            })?;
            info!(addr = %listener.local_addr()?, "metrics on /metrics");
            let (m, state, roots) = service.metrics();
            Some(tokio::spawn(metrics::serve(listener, m, state, roots)))
        }
    };

    let local = listener.local_addr()?;
    info!(name = %config.name, addr = %local, version = slipway_common::VERSION, "slipd listening");
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel(64);
    let pending = std::sync::Arc::new(std::sync::Mutex::new(Pending::default()));
    let accept_loop = tokio::spawn(async move {
        let mut refused: u64 = 0;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = PendingSlot::claim(&pending, peer.ip()) else {
                // Closed at once: no fd, memory or task is held for it.
                refused += 1;
                if refused.is_power_of_two() {
                    warn!(%peer, refused, "too many pending TLS handshakes; closing new connections");
                }
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            // (The certificate renewed since the last connection, if it was.)
            let acceptor = acceptor.read().expect("acceptor").clone();
            let conn_tx = conn_tx.clone();
            // Handshakes run on their own tasks so a slow or hostile peer cannot stall accept.
            tokio::spawn(async move {
                let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(slot);
                match result {
                    Ok(Ok(tls)) => {
                        debug!(%peer, "controller connected");
                        let _ = conn_tx.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                    Ok(Err(e)) => warn!(%peer, error = %e, "tls handshake refused"),
                    Err(_) => debug!(%peer, "tls handshake timed out"),
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
    renewing.abort();
    if let Some(task) = metrics {
        task.abort();
    }
    info!("slipd stopped");
    result.context("grpc server")
}
