//! A small HTTP/1.1 client on hyper (already in the graph through tonic) for the few requests
//! the controller makes itself: a `slipctl` talking to `slipctl serve` (its unix socket, or a
//! URL), and notifications to chat robots and webhooks. One request per connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{CtlError, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS client config trusting the CA certificates of `ca_pem`, else the public roots: for
/// the servers the controller's config names (a syslog collector, the company directory).
pub fn tls_trusting(ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>> {
    Ok(match ca_pem {
        Some(pem) => slipway_common::tls::https_client_config(pem)?,
        None => slipway_common::tls::https_public_client_config()?,
    })
}

/// Where requests go.
#[derive(Clone)]
pub enum Target {
    Unix(PathBuf),
    /// `host:port`, and TLS when set (with the server name to check).
    Tcp {
        addr: String,
        tls: Option<(Arc<rustls::ClientConfig>, String)>,
    },
}

/// Whom an HTTPS URL's certificate must chain to.
pub enum Trust<'a> {
    /// The CA certificates of this PEM (a server with its own CA), if given.
    Ca(Option<&'a str>),
    /// The public web's roots (chat robots, public webhooks).
    Public,
}

impl Target {
    /// `http://host:port[/path]` or `https://…`: where to connect, and the path (with its query).
    pub fn from_url(url: &str, trust: Trust<'_>) -> Result<(Target, String)> {
        let bad =
            || CtlError::bad(format!("'{url}' is not a server URL")).fix("write http://HOST:PORT or https://HOST:PORT");
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad());
        };
        let (authority, base) = match rest.split_once('/') {
            Some((a, p)) => (a, format!("/{}", p.trim_end_matches('/'))),
            None => (rest, String::new()),
        };
        if authority.is_empty() {
            return Err(bad());
        }
        let host = authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(authority).trim_matches(['[', ']']).to_owned();
        let addr = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        let tls = match (tls, trust) {
            (false, _) => None,
            (true, Trust::Public) => Some((slipway_common::tls::https_public_client_config()?, host)),
            (true, Trust::Ca(ca)) => {
                let ca = ca.ok_or_else(|| {
                    CtlError::bad(format!("{url} is HTTPS and no CA to trust was given"))
                        .fix("set SLIPWAY_CA_FILE to the PEM of the CA that signed the server's certificate")
                })?;
                Some((slipway_common::tls::https_client_config(ca)?, host))
            }
        };
        Ok((Target::Tcp { addr, tls }, base))
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(target: &Target) -> Result<Box<dyn Io>> {
    let io: Box<dyn Io> = match target {
        Target::Unix(path) => Box::new(
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
                .await
                .map_err(|_| CtlError::failed(format!("{} did not answer", path.display())))?
                .map_err(|e| CtlError::failed(format!("cannot connect to {}: {e}", path.display())))?,
        ),
        Target::Tcp { addr, tls } => {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| CtlError::failed(format!("{addr} did not answer in {}s", CONNECT_TIMEOUT.as_secs())))?
                .map_err(|e| CtlError::failed(format!("cannot connect to {addr}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            match tls {
                None => Box::new(tcp),
                Some((config, host)) => {
                    let name = rustls::pki_types::ServerName::try_from(host.clone())
                        .map_err(|e| CtlError::bad(format!("'{host}' is not a server name: {e}")))?;
                    let stream = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| CtlError::failed(format!("TLS with {addr}: {e}")))?;
                    Box::new(stream)
                }
            }
        }
    };
    Ok(io)
}

/// Send one request; the response with its body still streaming.
pub async fn send<B>(target: &Target, request: hyper::Request<B>) -> Result<hyper::Response<Incoming>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = connect(target).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| CtlError::failed(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(request).await.map_err(|e| CtlError::failed(format!("HTTP request: {e}")))
}
