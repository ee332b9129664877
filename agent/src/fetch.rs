//! Fetching an artifact from an S3-compatible store by the presigned URL the controller sent in
//! the stage header: one HTTP/1.1 GET (TLS for https, trusting the CA the controller named or the
//! public roots), its body handed to the extractor chunk by chunk. Nothing of the store is
//! trusted: the extractor checks the digest and size the header carries, as for a push.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::AgentError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where an artifact URL points: `(tls, host, host:port, path?query)`.
fn parse(url: &str) -> Result<(bool, String, String, String), AgentError> {
    let bad = || AgentError::BadRequest(format!("artifact_url is not an http(s) URL: {}", redact(url)));
    let (tls, rest) = match url.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        _ => return Err(bad()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad())?,
        None if tls => 443,
        None => 80,
    };
    if host.is_empty() {
        return Err(bad());
    }
    let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    Ok((tls, host.to_owned(), addr, path.to_owned()))
}

/// The URL without its query: the signature is a credential for as long as it lives, and has no
/// business in logs or messages.
pub fn redact(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

/// Run a fetch from the store within the stage's deadline.
async fn by<T>(
    deadline: std::time::Instant,
    url: &str,
    fetch: impl std::future::Future<Output = Result<T, AgentError>>,
) -> Result<T, AgentError> {
    tokio::time::timeout_at(deadline.into(), fetch).await.map_err(|_| {
        AgentError::Upload(format!("the artifact store did not answer for {} before the stage deadline", redact(url)))
    })?
}

/// GET the artifact, before `deadline`: the response body, streaming, once the store answered
/// 200 (the caller bounds the rest of the body by the same deadline).
pub async fn open(url: &str, ca_pem: &str, deadline: std::time::Instant) -> Result<Incoming, AgentError> {
    by(deadline, url, open_now(url, ca_pem)).await
}

async fn open_now(url: &str, ca_pem: &str) -> Result<Incoming, AgentError> {
    let (tls, host, addr, path) = parse(url)?;
    let shown = redact(url).to_owned();
    let unreachable = |why: String| {
        AgentError::Upload(format!(
            "cannot fetch the artifact from the store at {addr}: {why} (is the store up? the controller's \
             [artifacts] endpoint must be reachable from this host)"
        ))
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| unreachable(format!("no answer in {}s", CONNECT_TIMEOUT.as_secs())))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if tls {
        let config = if ca_pem.is_empty() {
            slipway_common::tls::https_public_client_config()
        } else {
            slipway_common::tls::https_client_config(ca_pem)
        }
        .map_err(|e| AgentError::BadRequest(format!("artifact_ca_pem: {e}")))?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| AgentError::BadRequest(format!("'{host}' is not a server name: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| unreachable(format!("HTTP: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| AgentError::BadRequest(format!("artifact_url: {e}")))?;
    let response = sender.send_request(request).await.map_err(|e| unreachable(format!("HTTP: {e}")))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response.into_body());
    }
    let body = tokio::time::timeout(CONNECT_TIMEOUT, response.into_body().collect())
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let said = slipway_common::s3::said(&body);
    let hint = match status.as_u16() {
        403 => {
            "the presigned URL expired or its signature was refused: deploy again (the controller signs a fresh URL \
             for every stage; raise [artifacts] url_ttl_secs for slow hosts, and check the clocks)"
        }
        404 => "the object is not in the store: deploy again (the controller uploads it before any host fetches it)",
        _ => "check the store, then deploy again",
    };
    Err(AgentError::Upload(format!("the artifact store answered {status} for {shown}{said}: {hint}")))
}

/// GET a small object whole (a manifest) before `deadline`, refusing one larger than `max` bytes.
pub async fn bytes(url: &str, ca_pem: &str, max: usize, deadline: std::time::Instant) -> Result<Vec<u8>, AgentError> {
    by(deadline, url, bytes_now(url, ca_pem, max)).await
}

async fn bytes_now(url: &str, ca_pem: &str, max: usize) -> Result<Vec<u8>, AgentError> {
    let mut body = open_now(url, ca_pem).await?;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            AgentError::Upload(format!("the fetch from the artifact store ({}) broke: {e}", redact(url)))
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(AgentError::BadRequest(format!(
                    "the object at {} is larger than {max} bytes",
                    redact(url)
                )));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_and_their_signatures_kept_out_of_messages() {
        let (tls, host, addr, path) = parse("http://127.0.0.1:9000/b/p/x.tar.zst?X-Amz-Signature=abc").unwrap();
        assert!(!tls);
        assert_eq!((host.as_str(), addr.as_str()), ("127.0.0.1", "127.0.0.1:9000"));
        assert_eq!(path, "/b/p/x.tar.zst?X-Amz-Signature=abc");
        let (tls, host, addr, _) = parse("https://s3.example.com/b/k").unwrap();
        assert!(tls);
        assert_eq!((host.as_str(), addr.as_str()), ("s3.example.com", "s3.example.com:443"));
        let (_, host, addr, _) = parse("http://[::1]:9000/b/k").unwrap();
        assert_eq!((host.as_str(), addr.as_str()), ("::1", "[::1]:9000"));
        for bad in ["file:///etc/shadow", "ftp://h/x", "http://", "http://user:pw@h/x", "http://h:99999/x"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(redact("http://h/b/k?X-Amz-Signature=secret"), "http://h/b/k");
    }
}
