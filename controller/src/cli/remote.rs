//! A `slipctl` whose home has a running server (its socket answers), or that was given
//! `--server URL`, sends its command there ([`crate::server::exec`]) and prints what comes
//! back as it comes: one history, one lock table, one event stream for the CLI and the web.

use std::io::Write;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use crate::cli::args::{Cli, Command};
use crate::cli::console::Frame;
use crate::error::{CtlError, Result};
use crate::http_client::{self, Target};
use crate::server::exec::ExecBody;
use crate::state::home::Home;

pub struct Remote {
    target: Target,
    base: String,
    token: Option<String>,
}

/// Where this command goes, if not here: `--server URL`, or the home's own running server.
pub fn target(cli: &Cli, home: &Home) -> Result<Option<Remote>> {
    if matches!(cli.command, Command::Init | Command::Quickstart { .. } | Command::Serve(_) | Command::State(_)) {
        return Ok(None);
    }
    if let Some(url) = &cli.server {
        let ca = match std::env::var_os("SLIPWAY_CA_FILE") {
            Some(path) => Some(std::fs::read_to_string(&path).map_err(|e| {
                CtlError::bad(format!("cannot read SLIPWAY_CA_FILE {}: {e}", std::path::Path::new(&path).display()))
            })?),
            None => None,
        };
        let (target, base) = Target::from_url(url, http_client::Trust::Ca(ca.as_deref()))?;
        let token = std::env::var("SLIPWAY_TOKEN").ok().filter(|t| !t.is_empty()).ok_or_else(|| {
            CtlError::bad(format!("--server {url} needs a token"))
                .fix("set SLIPWAY_TOKEN to one made by `slipctl token create` on the server")
        })?;
        return Ok(Some(Remote { target, base, token: Some(token) }));
    }
    let socket = home.root.join("slipctl.sock");
    if socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Ok(Some(Remote { target: Target::Unix(socket), base: String::new(), token: None }));
    }
    Ok(None)
}

/// This process's arguments without the ones that choose where it runs.
fn forwarded_args() -> Vec<String> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--server" || a == "--home" {
            args.next();
        } else if !(a.starts_with("--server=") || a.starts_with("--home=")) {
            out.push(a);
        }
    }
    out
}

pub async fn run(remote: Remote) -> Result<u8> {
    let argv = forwarded_args();
    let stdin = if argv.iter().any(|a| a == "--password-stdin") {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| CtlError::bad(format!("cannot read stdin: {e}")))?;
        Some(line)
    } else {
        None
    };
    let body = ExecBody { argv, cwd: std::env::current_dir().ok(), stdin };
    let mut remote = remote;
    let mut redirected = false;
    let response = loop {
        let response = send_command(&remote, &body).await?;
        if response.status() != hyper::StatusCode::SERVICE_UNAVAILABLE || redirected {
            break response;
        }
        // A standby names the leader: send the command there, once.
        let bytes = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let error = doc["error"].as_str().unwrap_or("the server is not available").to_owned();
        let Some(leader) = doc["leader"].as_str().filter(|_| remote.token.is_some()) else {
            let fix = match doc["leader"].as_str() {
                Some(url) => format!("run it against the leader: --server {url} (with SLIPWAY_TOKEN)"),
                None => doc["fix"].as_str().unwrap_or("try again in a moment").to_owned(),
            };
            return Err(crate::server::error::ApiError::new(hyper::StatusCode::SERVICE_UNAVAILABLE, error, fix).into());
        };
        eprintln!("{error}: sending the command there");
        let ca = std::env::var_os("SLIPWAY_CA_FILE").and_then(|p| std::fs::read_to_string(p).ok());
        let (target, base) = Target::from_url(leader, http_client::Trust::Ca(ca.as_deref()))?;
        remote = Remote { target, base, token: remote.token.clone() };
        redirected = true;
    };
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let error = doc["error"].as_str().unwrap_or("the server refused the command").to_owned();
        let fix = doc["fix"].as_str().unwrap_or("").to_owned();
        let status = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        return Err(crate::server::error::ApiError::new(status, error, fix).into());
    }
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CtlError::failed(format!("the server's answer broke off: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            match serde_json::from_slice::<Frame>(&line) {
                Ok(Frame::Out(text)) => {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{text}");
                    let _ = out.flush();
                }
                Ok(Frame::Err(text)) => eprintln!("{text}"),
                Ok(Frame::Exit(code)) => return Ok(code),
                Err(e) => return Err(CtlError::failed(format!("the server sent something else than output: {e}"))),
            }
        }
    }
    Err(CtlError::failed("the server stopped before the command finished")
        .fix("`slipctl history` says what each host is"))
}

async fn send_command(remote: &Remote, body: &ExecBody) -> Result<hyper::Response<hyper::body::Incoming>> {
    let mut request = hyper::Request::post(format!("{}/api/v1/cli", remote.base))
        .header(hyper::header::HOST, "slipway")
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(token) = &remote.token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    } else if let Some(user) = std::env::var("SLIPWAY_USER").ok().filter(|u| !u.is_empty()) {
        // On the server's socket: the Slipway user this operator acts as (records, approvals).
        request = request.header(crate::server::auth::DECLARED_USER, user);
    }
    let request = request
        .body(Full::new(Bytes::from(serde_json::to_vec(body).expect("json"))))
        .map_err(|e| CtlError::failed(format!("request: {e}")))?;
    http_client::send(&remote.target, request).await
}

/// `artifact push` to a server: the bytes go up in the request (`POST
/// /api/v1/projects/{p}/artifacts`), never read by the server from this host's paths. A
/// directory is packed here first.
pub async fn push_artifact(remote: Remote, cmd: crate::cli::artifacts::ArtifactCommand, json: bool) -> Result<u8> {
    let crate::cli::artifacts::ArtifactCommand::Push { project, path, name, commit, sha256 } = cmd else {
        unreachable!("only a push uploads");
    };
    let (bytes, file_name) = crate::cli::artifacts::bytes_to_push(&path)?;
    let digest = crate::ops::artifacts::bytes_sha256(&bytes);
    if let Some(declared) = &sha256
        && !declared.eq_ignore_ascii_case(&digest)
    {
        return Err(CtlError::bad(format!("{} has sha256 {digest}, not the {declared} given", path.display()))
            .fix("push the file CI built, or drop --sha256"));
    }
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("name", &name)
        .append_pair("commit", &commit)
        .append_pair("file", &file_name)
        .finish();
    let mut request = hyper::Request::post(format!("{}/api/v1/projects/{project}/artifacts?{query}", remote.base))
        .header(hyper::header::HOST, "slipway")
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .header(crate::server::artifacts::SHA256_HEADER, &digest);
    if let Some(token) = &remote.token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    } else if let Some(user) = std::env::var("SLIPWAY_USER").ok().filter(|u| !u.is_empty()) {
        request = request.header(crate::server::auth::DECLARED_USER, user);
    }
    let request = request.body(Full::new(Bytes::from(bytes))).map_err(|e| CtlError::failed(format!("request: {e}")))?;
    let response = http_client::send(&remote.target, request).await?;
    let status = response.status();
    let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status != hyper::StatusCode::CREATED {
        let error = doc["error"].as_str().unwrap_or("the server refused the artifact").to_owned();
        let fix = doc["fix"].as_str().unwrap_or("").to_owned();
        return Err(crate::server::error::ApiError::new(status, error, fix).into());
    }
    let kept: crate::state::artifacts::PushedArtifact = serde_json::from_value(doc.clone())
        .map_err(|e| CtlError::failed(format!("the server answered something else than an artifact: {e}")))?;
    let mut out = std::io::stdout().lock();
    let _ = if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&doc).unwrap_or_default())
    } else {
        write!(out, "{}", crate::cli::artifacts::text(&kept))
    };
    Ok(0)
}
