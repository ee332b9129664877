//! Dialling agents over mTLS: a custom connector gives tonic a rustls stream whose server
//! certificate must name the agent dialled (see `slipway_common::tls`).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use slipway_common::tls::agent_server_name;
use slipway_proto::{MAX_MESSAGE_BYTES, pb};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::engine::host_error::HostError;
use crate::state::store::AgentRecord;

pub type AgentClient = pb::agent_client::AgentClient<Channel>;

/// Time limits for talking to agents.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// For short calls (info, releases, activate, abort).
    pub call: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::host(30)
    }
}

impl Timeouts {
    /// A host silent for `secs` counts as failed: connect, short calls and HTTP/2 keepalive
    /// (pings every secs/3, dead after 2·secs/3 without an answer) all fit within it.
    pub fn host(secs: u64) -> Self {
        Timeouts { connect: Duration::from_secs(secs.max(1)), call: Duration::from_secs(secs.max(1)) }
    }

    fn keepalive(&self) -> (Duration, Duration) {
        let total = self.call.max(Duration::from_secs(3));
        (total / 3, total * 2 / 3)
    }
}

/// Connect to one agent; the error is a sentence for people.
pub async fn connect(
    tls: Arc<rustls::ClientConfig>,
    agent: &AgentRecord,
    timeouts: Timeouts,
) -> Result<AgentClient, HostError> {
    let server_name = agent_server_name(&agent.name).map_err(|e| HostError::Connect(e.to_string()))?;
    let addr = agent.addr.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let (tls, addr, server_name) = (TlsConnector::from(tls.clone()), addr.clone(), server_name.clone());
        async move {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let (ping_every, ping_timeout) = timeouts.keepalive();
    let endpoint = Endpoint::from_shared(format!("http://{}", agent.addr))
        .map_err(|e| HostError::Connect(format!("bad address '{}': {e}", agent.addr)))?
        .connect_timeout(timeouts.connect)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .http2_keep_alive_interval(ping_every)
        .keep_alive_timeout(ping_timeout)
        .keep_alive_while_idle(true);
    let channel = endpoint.connect_with_connector(connector).await.map_err(|e| {
        HostError::Connect(format!("cannot connect to {} at {}: {}", agent.name, agent.addr, error_chain(&e)))
    })?;
    Ok(pb::agent_client::AgentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// An error and its sources, joined: tonic's top-level message alone says little.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A gRPC status as a sentence.
pub fn status_text(status: &tonic::Status) -> String {
    if status.message().is_empty() { format!("{:?}", status.code()) } else { status.message().to_owned() }
}
