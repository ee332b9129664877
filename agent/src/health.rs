//! Health checks after activation, run on the host itself: an HTTP GET with no external tool
//! (plain HTTP/1.1 on a TCP socket), or a command as the target user. Retried `retries` times,
//! `interval_secs` apart, each attempt bounded by `timeout_secs`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `http://host[:port]/path` split into (host:port, host header, path).
pub fn parse_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("'{url}' is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("'{url}' has no host"));
    }
    let addr = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, authority.to_owned(), path.to_owned()))
}

/// One GET; the status code, or why there is none.
pub async fn http_status(url: &str, timeout: Duration) -> Result<u16, String> {
    let (addr, host, path) = parse_url(url)?;
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: slipd-health\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
            let n = stream.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        line.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|_| line.starts_with("HTTP/"))
            .ok_or_else(|| format!("not an HTTP response: {:?}", line.lines().next().unwrap_or("")))
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| format!("no answer within {}s", timeout.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/healthz").unwrap(),
            ("127.0.0.1:8080".into(), "127.0.0.1:8080".into(), "/healthz".into())
        );
        assert_eq!(parse_url("http://localhost").unwrap(), ("localhost:80".into(), "localhost".into(), "/".into()));
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http:///x").is_err());
    }

    #[tokio::test]
    async fn status_from_a_real_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await.unwrap();
        });
        let url = format!("http://127.0.0.1:{port}/healthz");
        assert_eq!(http_status(&url, Duration::from_secs(5)).await, Ok(503));
        let closed = format!("http://127.0.0.1:{}/", slipway_free_port());
        assert!(http_status(&closed, Duration::from_secs(5)).await.is_err());
    }

    fn slipway_free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}
