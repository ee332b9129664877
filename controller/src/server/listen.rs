//! The server's listeners: TCP (optionally TLS through the one TLS stack) and the owner's unix
//! socket. Each connection is served by hyper with a header timeout, a bounded number at a time
//! ([`MAX_CONNECTIONS`] on TCP, at most [`PER_ADDRESS`] from one address), and tagged with its
//! [`Peer`] for authentication and the audit fields. Every request's body must arrive within
//! [`BODY_TIMEOUT`] and every answer must start within [`REQUEST_TIMEOUT`] (an event stream's
//! answer starts at once and then lasts), so a client that trickles bytes holds a slot for
//! seconds, not for ever. The owner's socket has slots of its own: no TCP flood keeps the
//! operator from deploying, rolling back or cancelling.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::error::{Context, Result};

/// At most this many TCP connections are served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 4096;
/// At most this many of them from one address (IPv6: one /64); more are closed at once.
pub const PER_ADDRESS: usize = 64;
/// The owner's socket's own connections.
pub const SOCKET_CONNECTIONS: usize = 256;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a request's body may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a request may take before its answer starts (a check of every host, a fetch).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// A build CI pushes (`POST /api/v1/projects/{p}/artifacts`) may take this long to arrive and
/// be kept: the one route whose body is large. Only a caller who may push reaches its body
/// (the policy answers anyone else before reading it).
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Whether a request is a push of a build (the long deadlines).
fn is_upload<B>(req: &hyper::Request<B>) -> bool {
    req.method() == hyper::Method::POST
        && req.uri().path().starts_with("/api/v1/projects/")
        && req.uri().path().ends_with("/artifacts")
}
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a request came from.
#[derive(Debug, Clone)]
pub enum Peer {
    Tcp(SocketAddr),
    /// The local socket, from this OS user (the server's own, or root).
    Socket {
        user: String,
    },
    Unknown,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{}", addr.ip()),
            Peer::Socket { .. } => f.write_str("local"),
            Peer::Unknown => f.write_str("unknown"),
        }
    }
}

/// The TLS acceptor for the next connection.
pub type TlsSource = Arc<dyn Fn() -> tokio_rustls::TlsAcceptor + Send + Sync>;

/// The certificate a TLS client presented (DER), verified by the listener's TLS config (only
/// the agents' endpoint asks for one).
#[derive(Debug, Clone)]
pub struct ClientCert(pub Arc<Vec<u8>>);

/// Serves connections until `stop` turns true; `graceful` then waits for the open ones.
#[derive(Clone)]
pub struct Serving {
    pub router: Router,
    pub stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
    slots: Arc<Semaphore>,
    socket_slots: Arc<Semaphore>,
    by_address: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

impl Serving {
    /// Serving with `router` until `stop`; `graceful` lets the open connections finish.
    pub fn new(router: Router, stop: watch::Receiver<bool>, graceful: Arc<GracefulShutdown>) -> Serving {
        Serving {
            router,
            stop,
            graceful,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            socket_slots: Arc::new(Semaphore::new(SOCKET_CONNECTIONS)),
            by_address: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it has [`PER_ADDRESS`].
    fn address_slot(&self, ip: IpAddr) -> Option<AddressSlot> {
        let ip = per_address_key(ip);
        let mut open = self.by_address.lock().expect("connections by address");
        let n = open.entry(ip).or_default();
        if *n >= PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AddressSlot { ip, open: self.by_address.clone() })
    }

    fn connection<S>(&self, stream: S, peer: Peer, cert: Option<ClientCert>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(peer.clone());
            if let Some(cert) = &cert {
                req.extensions_mut().insert(cert.clone());
            }
            let (body_within, answer_within) =
                if is_upload(&req) { (UPLOAD_TIMEOUT, UPLOAD_TIMEOUT) } else { (BODY_TIMEOUT, REQUEST_TIMEOUT) };
            let req = req.map(|body| axum::body::Body::new(Deadlined::new(body, body_within)));
            let answer = router.clone().oneshot(req);
            async move {
                match tokio::time::timeout(answer_within, answer).await {
                    Ok(answer) => answer,
                    Err(_) => Ok(axum::response::IntoResponse::into_response(super::error::ApiError::new(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        format!("no answer within {} s", answer_within.as_secs()),
                        "try again; if it keeps happening, the server's log says what it waited for",
                    ))),
                }
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let conn = self.graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }

    /// Accept TCP connections (TLS when `tls` is set: it gives the acceptor for each
    /// connection, so its certificates may change while the server runs).
    pub async fn tcp(self, listener: TcpListener, tls: Option<TlsSource>) {
        let mut stop = self.stop.clone();
        loop {
            let permit = tokio::select! {
                p = self.slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                () = until_stop(&mut stop) => return,
            };
            let (stream, addr) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = until_stop(&mut stop) => return,
            };
            let Some(address) = self.address_slot(addr.ip()) else {
                tracing::debug!("closed a connection from {addr}: it has {PER_ADDRESS} open already");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            let held = (permit, address);
            match &tls {
                None => {
                    this.connection(Held { inner: stream, _slots: held }, Peer::Tcp(addr), None);
                }
                Some(source) => {
                    let acceptor = source();
                    tokio::spawn(async move {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                                let cert = cert.map(|c| ClientCert(Arc::new(c.to_vec())));
                                this.connection(Held { inner: tls, _slots: held }, Peer::Tcp(addr), cert)
                            }
                            Ok(Err(e)) => tracing::debug!("TLS handshake from {addr}: {e}"),
                            Err(_) => tracing::debug!("TLS handshake from {addr} timed out"),
                        }
                    });
                }
            }
        }
    }

    /// Accept connections on the owner's socket: only this process's user (or root) gets in.
    pub async fn unix(self, listener: UnixListener) {
        let mut stop = self.stop.clone();
        let me = rustix::process::geteuid();
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!("accept on the socket: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = until_stop(&mut stop) => return,
            };
            let Ok(cred) = stream.peer_cred() else { continue };
            if cred.uid() != me.as_raw() && cred.uid() != 0 {
                tracing::warn!("refused a socket connection from uid {}", cred.uid());
                continue;
            }
            let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(cred.uid()))
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| format!("uid {}", cred.uid()));
            // The socket's own slots: a flood on TCP never takes them. When all are busy the
            // operator's command waits for one instead of being dropped.
            let permit = tokio::select! {
                p = self.socket_slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                () = until_stop(&mut stop) => return,
            };
            self.connection(Held { inner: stream, _slots: permit }, Peer::Socket { user }, None);
        }
    }
}

/// Resolves when `stop` turns true.
pub async fn until_stop(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Bind `<home>/slipctl.sock` with mode 0600, replacing a stale one (no server answers it).
pub async fn bind_socket(path: &Path) -> Result<UnixListener> {
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(crate::error::CtlError::busy(format!("a server already answers on {}", path.display()))
            .fix("stop it first (systemctl stop slipctl), or give this one another --home"));
    }
    let _ = std::fs::remove_file(path);
    // Created under a umask that leaves nobody else a window to connect.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound.context(format_args!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .context(format_args!("cannot restrict {}", path.display()))?;
    Ok(listener)
}

/// What counts as one address (connection slots, login budgets): IPv4 (and IPv4-mapped IPv6)
/// by address; IPv6 by /64, which one host usually has whole.
pub fn per_address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// One open connection from an address; the count goes down when it closes.
struct AddressSlot {
    ip: IpAddr,
    open: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("connections by address");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A request body that must arrive by a deadline: past it, reading fails (the handler answers
/// 408 or gives up, and the connection closes).
struct Deadlined {
    inner: Incoming,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    within: Duration,
}

impl Deadlined {
    fn new(inner: Incoming, within: Duration) -> Deadlined {
        Deadlined { inner, deadline: Box::pin(tokio::time::sleep(within)), within }
    }
}

impl hyper::body::Body for Deadlined {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future;
        let within = self.within.as_secs();
        let late = || format!("the request body did not arrive within {within} s").into();
        if self.deadline.is_elapsed() {
            return std::task::Poll::Ready(Some(Err(late())));
        }
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            std::task::Poll::Pending => match self.deadline.as_mut().poll(cx) {
                std::task::Poll::Ready(()) => std::task::Poll::Ready(Some(Err(late()))),
                std::task::Poll::Pending => std::task::Poll::Pending,
            },
            ready => ready.map(|frame| frame.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A stream that holds its connection slots for as long as it lives.
struct Held<S, T> {
    inner: S,
    _slots: T,
}

impl<S: AsyncRead + Unpin, T: Unpin> AsyncRead for Held<S, T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin, T: Unpin> AsyncWrite for Held<S, T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
