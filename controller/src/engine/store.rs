//! Artifacts in an S3-compatible store (`[artifacts]` in the home's `config.toml`): the controller
//! uploads each artifact a deploy ships (full or delta) once, by a presigned PUT, and gives each
//! host a short-lived presigned GET in its stage header, signed when that host's stage starts. The
//! agent checks the digest and manifest as for a push: the store is trusted for nothing.
//!
//! Objects are named by content: `<prefix>/<project>/<sha256>.tar.zst`.
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Bytes, Frame};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::error::{CtlError, Result};
use crate::http_client::{self, Trust};
use crate::state::home::{ArtifactsConfig, HomeConfig};

/// A configured store.
pub struct Store {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    ttl: Duration,
    /// The endpoint's CA, when it has its own.
    ca_pem: Option<String>,
    /// `s3://bucket/prefix at endpoint`, for messages.
    shown: String,
    config_path: String,
    /// Objects this process has uploaded (by key): each artifact goes up once per deploy.
    uploaded: std::sync::Mutex<HashSet<String>>,
    /// The bucket answered a HEAD.
    probed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Store {
    /// The store of this home, if `[artifacts]` names one.
    pub fn of_home(home: &Path) -> Result<Option<Store>> {
        match HomeConfig::load(home)?.artifacts {
            None => Ok(None),
            Some(config) => Store::new(&config, home).map(Some),
        }
    }

    pub fn new(config: &ArtifactsConfig, home: &Path) -> Result<Store> {
        let config_path = home.join("config.toml").display().to_string();
        let fix = |what: &str| format!("{what} in [artifacts] of {config_path}");
        let (bucket, prefix) = config
            .store
            .strip_prefix("s3://")
            .map(|rest| rest.split_once('/').unwrap_or((rest, "")))
            .filter(|(bucket, _)| !bucket.is_empty())
            .ok_or_else(|| {
                CtlError::bad(format!("[artifacts] store = '{}' is not an s3:// location", config.store))
                    .fix(fix("write store = \"s3://BUCKET/PREFIX\""))
            })?;
        let endpoint: url::Url = config.endpoint.parse().map_err(|e| {
            CtlError::bad(format!("[artifacts] endpoint = '{}' is not a URL: {e}", config.endpoint))
                .fix(fix("write endpoint = \"https://HOST:PORT\""))
        })?;
        let style = if config.path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let bucket_name = bucket.to_owned();
        let bucket = Bucket::new(endpoint, style, bucket_name.clone(), config.region.clone()).map_err(|e| {
            CtlError::bad(format!("[artifacts]: cannot address bucket '{bucket_name}' at {}: {e}", config.endpoint))
                .fix(fix("check endpoint, store and path_style"))
        })?;
        let credentials = match (&config.access_key, &config.secret_key) {
            (Some(key), Some(secret)) => Credentials::new(key.clone(), secret.clone()),
            (None, None) => Credentials::from_env().ok_or_else(|| {
                CtlError::bad(
                    "[artifacts] has no credentials and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set",
                )
                .fix(fix("set access_key and secret_key"))
            })?,
            _ => {
                return Err(CtlError::bad("[artifacts] has one of access_key and secret_key without the other")
                    .fix(fix("set both")));
            }
        };
        if config.url_ttl_secs == 0 || config.url_ttl_secs > 7 * 24 * 3600 {
            return Err(CtlError::bad(format!(
                "[artifacts] url_ttl_secs = {} is out of range (1 s to 7 days, S3's limit)",
                config.url_ttl_secs
            ))
            .fix(fix("set url_ttl_secs")));
        }
        let ca_pem = match &config.ca_file {
            None => None,
            Some(p) => {
                let path = crate::state::home::in_home(home, p);
                Some(std::fs::read_to_string(&path).map_err(|e| {
                    CtlError::bad(format!("cannot read [artifacts] ca_file {}: {e}", path.display()))
                        .fix(fix("fix ca_file"))
                })?)
            }
        };
        let prefix = prefix.trim_matches('/').to_owned();
        Ok(Store {
            shown: format!("s3://{bucket_name}/{prefix} at {}", config.endpoint),
            bucket,
            credentials,
            prefix,
            ttl: Duration::from_secs(config.url_ttl_secs),
            ca_pem,
            config_path,
            uploaded: Default::default(),
            probed: Default::default(),
        })
    }

    /// Where an artifact of `project` with this digest lives in the bucket.
    pub fn key(&self, project: &str, sha256: &str) -> String {
        let name = format!("{project}/{sha256}.tar.zst");
        if self.prefix.is_empty() { name } else { format!("{}/{name}", self.prefix) }
    }

    /// A GET URL for `key`, valid for the configured time from now.
    pub fn get_url(&self, key: &str) -> String {
        rusty_s3::actions::GetObject::new(&self.bucket, Some(&self.credentials), key).sign(self.ttl).to_string()
    }

    /// A GET URL for `key` signed at `at` (tests make expired ones with it).
    pub fn get_url_signed_at(&self, key: &str, at: std::time::SystemTime) -> String {
        let at = jiff::Timestamp::try_from(at).unwrap_or_else(|_| jiff::Timestamp::now());
        rusty_s3::actions::GetObject::new(&self.bucket, Some(&self.credentials), key)
            .sign_with_time(self.ttl, &at)
            .to_string()
    }

    /// The endpoint's CA to send to agents (empty: public roots).
    pub fn ca_pem(&self) -> &str {
        self.ca_pem.as_deref().unwrap_or("")
    }

    fn target(&self, url: &str) -> Result<(http_client::Target, String)> {
        let (target, _) = http_client::Target::from_url(
            url,
            match &self.ca_pem {
                Some(ca) => Trust::Ca(Some(ca)),
                None => Trust::Public,
            },
        )?;
        let path = url.split_once("://").and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()));
        Ok((target, path.unwrap_or_else(|| "/".into())))
    }

    /// Where the manifest with this digest lives in the bucket.
    pub fn manifest_key(&self, project: &str, digest: &[u8]) -> String {
        self.key(project, &hex::encode(digest)).replace(".tar.zst", ".manifest")
    }

    /// Upload `bytes` as `key`, unless this process already did. `true` when it sent them.
    pub async fn put_bytes_once(&self, key: &str, bytes: Vec<u8>) -> Result<bool> {
        let size = bytes.len() as u64;
        self.put(key, Object::Bytes(bytes), size).await
    }

    /// Upload `path` (`size` bytes) as `key`, unless this process already did. `true` when it sent it.
    pub async fn put_once(&self, key: &str, path: &Path, size: u64) -> Result<bool> {
        self.put(key, Object::File(path.to_path_buf()), size).await
    }

    async fn put(&self, key: &str, object: Object, size: u64) -> Result<bool> {
        if self.uploaded.lock().expect("uploaded").contains(key) {
            return Ok(false);
        }
        // Some servers create a missing bucket on PUT (or store the object nowhere useful): ask
        // once whether it is there, so a wrong name is said as such.
        if !self.probed.swap(true, std::sync::atomic::Ordering::SeqCst)
            && let Err(e) = self.probe().await
        {
            self.probed.store(false, std::sync::atomic::Ordering::SeqCst);
            return Err(e);
        }
        let url = rusty_s3::actions::PutObject::new(&self.bucket, Some(&self.credentials), key).sign(self.ttl);
        let (target, path_query) = self.target(url.as_str())?;
        let host = url.host_str().unwrap_or_default().to_owned() + &port_suffix(&url);
        let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Frame<Bytes>, std::io::Error>>(4);
        let shown = match &object {
            Object::File(path) => path.display().to_string(),
            Object::Bytes(_) => key.to_owned(),
        };
        let reader = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let file = match object {
                Object::File(path) => path,
                Object::Bytes(bytes) => {
                    let _ = tx.blocking_send(Ok(Frame::data(Bytes::from(bytes))));
                    return Ok(());
                }
            };
            let mut f = std::fs::File::open(&file)?;
            loop {
                let mut chunk = Vec::with_capacity(slipway_proto::CHUNK_BYTES);
                (&mut f).take(slipway_proto::CHUNK_BYTES as u64).read_to_end(&mut chunk)?;
                if chunk.is_empty() {
                    return Ok::<_, std::io::Error>(());
                }
                if tx.blocking_send(Ok(Frame::data(Bytes::from(chunk)))).is_err() {
                    return Ok(());
                }
            }
        });
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let request = hyper::Request::put(path_query)
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONTENT_LENGTH, size)
            .body(body)
            .map_err(|e| CtlError::failed(format!("cannot make the upload request: {e}")))?;
        let response = http_client::send(&target, request).await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(CtlError::failed(format!("cannot read {shown}: {e}"))),
            Err(e) => return Err(CtlError::failed(format!("artifact reader failed: {e}"))),
        }
        if !status.is_success() {
            return Err(self.refused("upload", status, &body));
        }
        self.uploaded.lock().expect("uploaded").insert(key.to_owned());
        Ok(true)
    }

    /// Whether the bucket answers a HEAD with the credentials.
    pub async fn probe(&self) -> Result<()> {
        let url = rusty_s3::actions::HeadBucket::new(&self.bucket, Some(&self.credentials)).sign(self.ttl);
        let (target, path_query) = self.target(url.as_str())?;
        let request = hyper::Request::head(path_query)
            .header(hyper::header::HOST, url.host_str().unwrap_or_default().to_owned() + &port_suffix(&url))
            .body(Empty::<Bytes>::new())
            .map_err(|e| CtlError::failed(format!("cannot make the request: {e}")))?;
        let response = http_client::send(&target, request).await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(self.refused("bucket check", status, b""))
    }

    fn unreachable(&self, e: CtlError) -> CtlError {
        CtlError::failed(format!("the artifact store {} cannot be reached: {e}", self.shown))
            .fix(format!("start the store, or fix endpoint in [artifacts] of {}", self.config_path))
    }

    fn refused(&self, what: &str, status: hyper::StatusCode, body: &[u8]) -> CtlError {
        let code = slipway_common::s3::error_fields(body).0.unwrap_or_default();
        let said = slipway_common::s3::said(body);
        let message = format!("the artifact store {} refused the {what}: {status}{said}", self.shown);
        let config = &self.config_path;
        let fix = match (code.as_str(), status.as_u16()) {
            ("NoSuchBucket", _) | (_, 404) => {
                format!("create bucket '{}' on the store, or fix store in [artifacts] of {config}", self.bucket.name())
            }
            ("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied", _) | (_, 401 | 403) => format!(
                "check access_key and secret_key in [artifacts] of {config} (or AWS_ACCESS_KEY_ID / \
                 AWS_SECRET_ACCESS_KEY), their rights on the bucket, and this machine's clock"
            ),
            _ => format!("check the store, and [artifacts] in {config}"),
        };
        CtlError::failed(message).fix(fix)
    }
}

/// What is uploaded: a file (read in chunks as it goes) or bytes in memory (a manifest).
enum Object {
    File(std::path::PathBuf),
    Bytes(Vec<u8>),
}

fn port_suffix(url: &url::Url) -> String {
    url.port().map(|p| format!(":{p}")).unwrap_or_default()
}
