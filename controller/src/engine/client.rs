//! Dialling agents over mTLS: a custom connector gives tonic a rustls stream whose server
//! certificate must name the agent dialled (see `slipway_common::tls`).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use slipway_common::tls::agent_server_name;
use slipway_proto::{MAX_MESSAGE_BYTES, pb};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::engine::host_error::HostError;
use crate::state::store::AgentRecord;

pub type AgentClient = pb::agent_client::AgentClient<InterceptedService<Channel, StillTrusted>>;

/// Before every call to an agent: refused when it was evicted, banned or removed since the
/// connection opened (`slipctl agent evict` takes effect on the next RPC, not the next dial).
#[derive(Clone)]
pub struct StillTrusted {
    name: String,
}

impl Interceptor for StillTrusted {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match crate::state::joins::revoked(&self.name) {
            Some(why) => Err(tonic::Status::permission_denied(why)),
            None => Ok(request),
        }
    }
}

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
    if let Some(done) = &agent.trust.evicted {
        return Err(HostError::Connect(crate::state::joins::evicted_error(&agent.name, done).to_string()));
    }
    if let Some(why) = crate::state::joins::revoked(&agent.name) {
        return Err(HostError::Connect(why));
    }
    let addr = agent.addr.clone();
    let (name, trust) = (agent.name.clone(), agent.trust.clone());
    let connector = tower::service_fn(move |_: Uri| {
        let (tls, addr, server_name) = (TlsConnector::from(tls.clone()), addr.clone(), server_name.clone());
        let (name, trust) = (name.clone(), trust.clone());
        async move {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(server_name, tcp).await?;
            // A joined agent may present only the certificates it was last issued.
            let presented = stream.get_ref().1.peer_certificates().and_then(|c| c.first());
            let pin = presented.map(|c| slipway_common::pki::pin_of(c)).unwrap_or_default();
            if !trust.accepts(&pin) {
                return Err(std::io::Error::other(format!(
                    "agent {name} presented a certificate the controller no longer accepts (replaced by a later \
                     join, or evicted): `slipctl agent token create {name}` and `slipd join --force` on the host"
                )));
            }
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
    let still = StillTrusted { name: agent.name.clone() };
    Ok(pb::agent_client::AgentClient::with_interceptor(channel, still)
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
