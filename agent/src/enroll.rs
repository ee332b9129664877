//! Joining and renewing (DESIGN.md "Joining hosts"). `slipd join URL --token T --ca-sha256 PIN`
//! makes the host's key (it never leaves the host), checks the controller's agents' endpoint
//! against PIN in the TLS handshake — before a byte of the token is sent — and writes
//! `agent.toml` and the pki files from what it answers. A running agent with a `[controller]`
//! URL renews its certificate over that certificate at a random point between 70 and 90 % of
//! its life (the same key, a new certificate), retrying with jittered backoff, and serves the
//! new one from the next connection on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use slipway_common::config::AgentConfig;
use slipway_common::tls::{TlsMaterial, agent_server_config};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the controller answers a join or a renewal.
#[derive(Debug, Deserialize)]
struct Issued {
    name: String,
    cert: String,
    ca: String,
    not_after: i64,
}

#[derive(Debug, Deserialize)]
struct Refusal {
    error: String,
    #[serde(default)]
    fix: String,
}

/// `https://host:port[/…]` → ("host:port", base path).
fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("'{url}' is not an https:// URL; the agents' endpoint speaks only HTTPS"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if authority.is_empty() {
        bail!("'{url}' names no host");
    }
    let addr = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    };
    Ok((addr, format!("/{}", path.trim_end_matches('/'))))
}

/// POST `body` as JSON to `url` + `path` over TLS with `tls`; the answer, or why not.
async fn post(
    url: &str,
    path: &str,
    tls: Arc<tokio_rustls::rustls::ClientConfig>,
    body: serde_json::Value,
) -> anyhow::Result<Issued> {
    let (addr, base) = split_url(url)?;
    let call = async {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .with_context(|| format!("cannot reach the controller at {addr}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(slipway_common::tls::controller_server_name(), tcp)
            .await
            .map_err(|e| anyhow::anyhow!("the controller at {addr} was refused: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let uri = format!("{}{path}", base.trim_end_matches('/'));
        let request = hyper::Request::post(uri)
            .header(hyper::header::HOST, addr.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let why = serde_json::from_slice::<Refusal>(&bytes)
                .map(|r| if r.fix.is_empty() { r.error } else { format!("{}; {}", r.error, r.fix) })
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            bail!("the controller refused ({status}): {why}");
        }
        serde_json::from_slice::<Issued>(&bytes).context("the controller's answer does not parse")
    };
    tokio::time::timeout(CALL_TIMEOUT, call).await.map_err(|_| anyhow::anyhow!("no answer from {addr} in 30 s"))?
}

/// Write `content` to `path` at `mode`, replacing it in one rename.
fn replace(path: &Path, content: &str, mode: u32) -> anyhow::Result<()> {
    slipway_common::files::replace(path, content.as_bytes(), mode)
        .with_context(|| format!("cannot replace {}", path.display()))
}

/// What `slipd join` is told.
pub struct JoinArgs {
    pub url: String,
    pub token: String,
    pub ca_sha256: String,
    /// Where `agent.toml` goes; the pki files go beside it.
    pub config: PathBuf,
    pub listen: std::net::SocketAddr,
    pub state_dir: PathBuf,
    pub allowed_roots: Vec<PathBuf>,
    pub force: bool,
}

/// What a join did.
pub struct Joined {
    pub name: String,
    pub not_after: i64,
    pub config: PathBuf,
}

/// `slipd join`.
pub async fn join(args: &JoinArgs) -> anyhow::Result<Joined> {
    let pin = args.ca_sha256.trim().to_ascii_lowercase();
    if pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "--ca-sha256 '{}' is not a SHA-256 in hex (64 characters); copy it from the join command",
            args.ca_sha256
        );
    }
    if !args.token.contains('.') {
        bail!("--token is `<id>.<secret>`, as `slipctl agent token create` printed it; copy it whole");
    }
    let dir = args.config.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let key_path = dir.join("agent.key");
    if (args.config.exists() || key_path.exists()) && !args.force {
        let held = std::fs::read_to_string(&args.config)
            .ok()
            .and_then(|t| AgentConfig::parse(&t, "agent.toml", &dir).ok())
            .map(|c| format!(" (agent '{}')", c.name))
            .unwrap_or_default();
        bail!(
            "this host already has an identity{held} in {}: nothing was changed; `slipd join --force …` replaces \
             it (with a new key)",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The key is made here and never sent; the request carries only its public half.
    let (csr, key_pem) = slipway_common::pki::request_for("join", None)?;
    let tls = slipway_common::tls::join_client_config(&pin)?;
    let body = serde_json::json!({"token": args.token, "csr": csr, "port": args.listen.port()});
    let issued = post(&args.url, "/v1/join", tls, body).await?;
    let roots: Vec<String> = args.allowed_roots.iter().map(|r| toml_str(&r.display().to_string())).collect();
    let config = format!(
        "# slipd config for agent '{name}', written by `slipd join`\n\
         name = {}\nlisten = {}\nstate_dir = {}\nallowed_roots = [{}]\n\n\
         [tls]\nca = \"ca.pem\"\ncert = \"agent.pem\"\nkey = \"agent.key\"\n\n\
         # Where this agent renews its certificate (over the certificate itself).\n\
         [controller]\nurl = {}\n",
        toml_str(&issued.name),
        toml_str(&args.listen.to_string()),
        toml_str(&args.state_dir.display().to_string()),
        roots.join(", "),
        toml_str(&args.url),
        name = issued.name,
    );
    AgentConfig::parse(&config, "agent.toml", &dir).context("the agent.toml slipd join would write")?;
    replace(&key_path, &key_pem, 0o600)?;
    replace(&dir.join("agent.pem"), &issued.cert, 0o644)?;
    replace(&dir.join("ca.pem"), &issued.ca, 0o644)?;
    replace(&args.config, &config, 0o644)?;
    Ok(Joined { name: issued.name, not_after: issued.not_after, config: args.config.clone() })
}

fn toml_str(s: &str) -> String {
    let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

/// The TLS acceptor the agent serves with, replaced when its certificate is renewed.
pub type SharedAcceptor = Arc<RwLock<TlsAcceptor>>;

/// A small jitter source (spreading renewals and retries, not secrets).
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        Jitter(nanos ^ (u64::from(std::process::id()) << 32) | 1)
    }

    /// A number in [lo, hi).
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + (hi - lo) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// When to renew the certificate at `cert` (unix seconds): at 70–90 % of the way from when it
/// was written (the file's time) to its expiry.
fn renew_at(cert: &Path, jitter: &mut Jitter) -> anyhow::Result<(f64, i64)> {
    let pem = std::fs::read_to_string(cert).with_context(|| format!("cannot read {}", cert.display()))?;
    let info = slipway_common::pki::cert_info(&slipway_common::pki::first_cert_der(&pem)?)?;
    let written = std::fs::metadata(cert)?
        .modified()?
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let life = (info.not_after as f64 - written).max(0.0);
    Ok((written + life * jitter.between(0.7, 0.9), info.not_after))
}

fn now_f64() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Renew the certificate for as long as the agent runs (when `agent.toml` names a controller).
pub async fn renew_forever(config: AgentConfig, acceptor: SharedAcceptor) {
    let Some(url) = config.controller_url.clone() else { return };
    let mut jitter = Jitter::new();
    loop {
        let (at, not_after) = match renew_at(&config.tls.cert, &mut jitter) {
            Ok(times) => times,
            Err(e) => {
                warn!("cannot read the certificate to plan its renewal: {e:#}");
                tokio::time::sleep(Duration::from_secs(60)).await;
                continue;
            }
        };
        let wait = (at - now_f64()).max(0.0);
        info!(in_secs = wait as u64, "certificate renewal planned");
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        // Retry with jittered, doubling backoff until it works or the certificate expires.
        let life_left = (not_after as f64 - now_f64()).max(1.0);
        let mut backoff = (life_left / 50.0).clamp(1.0, 30.0);
        loop {
            match renew_once(&config, &url, &acceptor).await {
                Ok(until) => {
                    info!(not_after = until, "certificate renewed");
                    break;
                }
                Err(e) => {
                    let left = not_after as f64 - now_f64();
                    if left <= 0.0 {
                        warn!(
                            "the certificate expired without renewal ({e:#}); the controller shows the fix: a new \
                             join token and `slipd join --force`"
                        );
                    } else {
                        warn!(retry_in_secs = backoff as u64, "certificate renewal failed: {e:#}");
                    }
                    let sleep = backoff * jitter.between(0.5, 1.5);
                    tokio::time::sleep(Duration::from_secs_f64(sleep)).await;
                    backoff = (backoff * 2.0).min(600.0);
                }
            }
        }
    }
}

/// One renewal: a request for the same key over the current certificate; the new certificate
/// and CA bundle written, and served from the next connection on.
async fn renew_once(config: &AgentConfig, url: &str, acceptor: &SharedAcceptor) -> anyhow::Result<i64> {
    let material = TlsMaterial::load(&config.tls)?;
    let (csr, _) = slipway_common::pki::request_for(&config.name, Some(&material.key_pem))?;
    let tls = slipway_common::tls::renew_client_config(&material)?;
    let issued = post(url, "/v1/renew", tls, serde_json::json!({"csr": csr})).await?;
    if issued.name != config.name {
        bail!("the controller issued a certificate for '{}', not '{}'", issued.name, config.name);
    }
    let fresh = TlsMaterial { ca_pem: issued.ca.clone(), cert_pem: issued.cert.clone(), key_pem: material.key_pem };
    let server = agent_server_config(&fresh).context("the renewed certificate does not load")?;
    replace(&config.tls.ca, &issued.ca, 0o644)?;
    replace(&config.tls.cert, &issued.cert, 0o644)?;
    *acceptor.write().expect("acceptor") = TlsAcceptor::from(server);
    Ok(issued.not_after)
}
