//! The server's listeners: TCP (optionally TLS through the one TLS stack) and the owner's unix
//! socket. Each connection is served by hyper with a header timeout, a bounded number at a time,
//! and tagged with its [`Peer`] for authentication and the audit fields.

use std::net::SocketAddr;
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

/// At most this many connections are served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
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

/// Serves connections until `stop` turns true; `graceful` then waits for the open ones.
#[derive(Clone)]
pub struct Serving {
    pub router: Router,
    pub stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
    slots: Arc<Semaphore>,
}

impl Serving {
    /// Serving with `router` until `stop`; `graceful` lets the open connections finish.
    pub fn new(router: Router, stop: watch::Receiver<bool>, graceful: Arc<GracefulShutdown>) -> Serving {
        Serving { router, stop, graceful, slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)) }
    }

    fn connection<S>(&self, stream: S, peer: Peer)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(peer.clone());
            router.clone().oneshot(req.map(axum::body::Body::new))
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

    /// Accept TCP connections (TLS when `tls` is set).
    pub async fn tcp(self, listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
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
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            match &tls {
                None => {
                    this.connection(Held { inner: stream, _permit: permit }, Peer::Tcp(addr));
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => this.connection(Held { inner: tls, _permit: permit }, Peer::Tcp(addr)),
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
            let Ok(permit) = self.slots.clone().try_acquire_owned() else { continue };
            self.connection(Held { inner: stream, _permit: permit }, Peer::Socket { user });
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

/// A stream that holds its connection slot for as long as it lives.
struct Held<S> {
    inner: S,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Held<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Held<S> {
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
