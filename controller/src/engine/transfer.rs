//! Sending a release to one host and staging it there: the upload in bounded chunks from a file
//! (or while it is packaged) and the agent's progress, hook output and result.
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use slipway_proto::pb;
use slipway_proto::pb::stage_event::Kind as EventKind;
use slipway_proto::pb::stage_request::Kind as RequestKind;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::engine::client::{self, AgentClient};
use crate::engine::events::HostEvent;
use crate::engine::host_error::{HostError, wire_release};
use crate::source::artifact::{self};
use crate::state::store::{AgentRecord, HostResult};
use crate::units::bytes;

use super::fanout::*;
use super::host_ops::*;
use super::package::*;

/// Send a package file in chunks; the header carried its digest.
pub(crate) async fn send_file(
    path: &Path,
    total: u64,
    req_tx: mpsc::Sender<pb::StageRequest>,
    mut report: impl FnMut(u64, u64),
) -> std::result::Result<u64, HostError> {
    // A plain file read on the blocking pool, straight into the chunk (no intermediate buffer,
    // no zeroing): the controller's work per host is the read, the encoding and the TLS.
    let read_err = |e: std::io::Error| HostError::Local(format!("cannot read artifact: {e}"));
    let mut file = Some(std::fs::File::open(path).map_err(read_err)?);
    let mut sent = 0u64;
    report(0, total);
    loop {
        let mut f = file.take().expect("the file is handed back after each chunk");
        let (f, chunk) = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut chunk = Vec::with_capacity(slipway_proto::CHUNK_BYTES);
            let read = (&mut f).take(slipway_proto::CHUNK_BYTES as u64).read_to_end(&mut chunk).map(|_| chunk);
            (f, read)
        })
        .await
        .map_err(|e| HostError::Local(format!("artifact reader failed: {e}")))?;
        file = Some(f);
        let chunk = chunk.map_err(read_err)?;
        if chunk.is_empty() {
            return Ok(sent);
        }
        sent += chunk.len() as u64;
        if req_tx.send(pb::StageRequest { kind: Some(RequestKind::Chunk(chunk)) }).await.is_err() {
            return Ok(sent); // The call ended; its status says why.
        }
        report(sent, total);
    }
}

/// Send the full artifact while it is being packaged: what is written so far, then the rest as it
/// comes, then a trailer with the digest (the header had none).
pub(crate) async fn send_streamed(
    file: Arc<std::fs::File>,
    mut progress: watch::Receiver<artifact::PackProgress>,
    req_tx: mpsc::Sender<pb::StageRequest>,
    mut report: impl FnMut(u64, u64),
) -> std::result::Result<u64, HostError> {
    let mut sent = 0u64;
    report(0, 0);
    loop {
        let state = progress.borrow_and_update().clone();
        let (available, digest) = match state {
            artifact::PackProgress::Writing(n) => (n, None),
            artifact::PackProgress::Done(Ok((sha256, size))) => (size, Some(sha256)),
            artifact::PackProgress::Done(Err(e)) => return Err(HostError::Local(format!("packaging failed: {e}"))),
        };
        while sent < available {
            let len = (available - sent).min(slipway_proto::CHUNK_BYTES as u64) as usize;
            let (f, offset) = (file.clone(), sent);
            let chunk = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; len];
                f.read_exact_at(&mut buf, offset).map(|()| buf)
            })
            .await
            .map_err(|e| HostError::Local(format!("artifact reader failed: {e}")))?
            .map_err(|e| HostError::Local(format!("cannot read artifact: {e}")))?;
            sent += len as u64;
            if req_tx.send(pb::StageRequest { kind: Some(RequestKind::Chunk(chunk)) }).await.is_err() {
                return Ok(sent); // The call ended; its status says why.
            }
            report(sent, if digest.is_some() { available } else { 0 });
        }
        if let Some(sha256) = digest {
            let trailer =
                pb::StageTrailer { artifact_sha256: slipway_proto::hex_to_bytes(&sha256), artifact_size: sent };
            let _ = req_tx.send(pb::StageRequest { kind: Some(RequestKind::Trailer(trailer)) }).await;
            return Ok(sent);
        }
        tokio::select! {
            changed = progress.changed() => {
                if changed.is_err() {
                    return Err(HostError::Local("packaging stopped without a result".into()));
                }
            }
            () = req_tx.closed() => return Ok(sent), // The call ended; its status says why.
        }
    }
}

/// Connect, upload the artifact and wait for the agent to verify and stage it.
pub(crate) async fn stage_host(
    fan: Fanout,
    agent: AgentRecord,
    header: pb::StageHeader,
    upload: Upload,
    total_entries: u64,
    connected: Option<AgentClient>,
) -> (HostResult, Option<AgentClient>) {
    let Fanout { tls, events, clock, timeouts } = fan;
    let mut result = new_host_result(&agent, wire_release(&header.release_id).as_ref());
    let name = agent.name.clone();
    let send = |e: HostEvent| {
        let _ = events.send((name.clone(), e));
    };
    send(HostEvent::Connecting);
    let t = Instant::now();
    let connection = match connected {
        Some(c) => Ok(c),
        None => client::connect(tls, &agent, timeouts).await,
    };
    let mut client = match connection {
        Ok(c) => {
            clock.step(&mut result, "connect", t, Ok(agent.addr.clone()));
            c
        }
        Err(e) => {
            clock.step(&mut result, "connect", t, Err(e.clone()));
            send(HostEvent::Failed(e));
            return (result, None);
        }
    };

    let t = Instant::now();
    let total = header.artifact_size;
    let stage_secs = if header.stage_timeout_secs == 0 { 3600 } else { header.stage_timeout_secs };
    let header_hooks_secs =
        header.pre_release.as_ref().map_or(0, |h| h.timeout_secs.saturating_mul(h.commands.len() as u64));
    let fetched = !header.artifact_url.is_empty();
    let (req_tx, req_rx) = mpsc::channel::<pb::StageRequest>(2);
    let _ = req_tx.send(pb::StageRequest { kind: Some(RequestKind::Header(header)) }).await;
    let upload_events = events.clone();
    let upload_name = agent.name.clone();
    let uploader = tokio::spawn(async move {
        let mut last = Instant::now();
        let report = move |sent: u64, total: u64| {
            if sent == 0 || sent == total || last.elapsed().as_millis() >= 200 {
                last = Instant::now();
                let _ = upload_events.send((upload_name.clone(), HostEvent::Uploading { sent, total }));
            }
        };
        match upload {
            // The agent fetches it from the store: nothing follows the header.
            _ if fetched => Ok(0),
            Upload::File { path, .. } => send_file(&path, total, req_tx, report).await,
            Upload::Streamed { file, progress } => send_streamed(file, progress, req_tx, report).await,
        }
    });

    // The stage's deadline, the same the agent keeps, plus its pre_release hooks and a call's slack.
    let deadline = std::time::Duration::from_secs(stage_secs.saturating_add(header_hooks_secs)) + timeouts.call;
    let outcome = async {
        let mut stream =
            client.stage(ReceiverStream::new(req_rx)).await.map_err(|s| HostError::from_status(&s))?.into_inner();
        loop {
            match stream.message().await {
                Ok(Some(pb::StageEvent { kind: Some(EventKind::Progress(p)) })) => {
                    send(HostEvent::Unpacking { entries: p.entries_written, total: total_entries });
                }
                Ok(Some(pb::StageEvent { kind: Some(EventKind::Staged(s)) })) => return Ok(s),
                Ok(Some(pb::StageEvent { kind: Some(EventKind::Output(o)) })) => {
                    on_hook_event(Some(o), None, &mut result, &events);
                }
                Ok(Some(pb::StageEvent { kind: Some(EventKind::Hook(h)) })) => {
                    on_hook_event(None, Some(h), &mut result, &events);
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(HostError::Ended("upload")),
                Err(status) => return Err(HostError::from_status(&status)),
            }
        }
    };
    let outcome = match tokio::time::timeout(deadline, outcome).await {
        Ok(outcome) => outcome,
        Err(_) => {
            uploader.abort();
            Err(HostError::Timeout {
                what: "the stage did not finish",
                secs: deadline.as_secs(),
                hint: " (rollout.stage_timeout_secs)",
            })
        }
    };
    let upload = match uploader.await {
        Ok(sent) => sent,
        Err(e) if e.is_cancelled() => Err(HostError::Local("the upload was stopped at the stage deadline".into())),
        Err(e) => Err(HostError::Local(format!("upload task failed: {e}"))),
    };
    match (outcome, upload) {
        (Ok(staged), Ok(sent)) => {
            result.bytes_sent = sent;
            let reused = if staged.reused > 0 { format!(" ({} files reused)", staged.reused) } else { String::new() };
            let how = if fetched {
                format!("{} fetched from the store", bytes(total))
            } else {
                format!("{} sent", bytes(sent))
            };
            let detail = format!("{how}, {} entries verified{reused} in {}", staged.entries, staged.release_path);
            clock.step(&mut result, "stage", t, Ok(detail));
            send(HostEvent::Staged { elapsed_ms: t.elapsed().as_millis() as u64 });
            result.ok = true;
            (result, Some(client))
        }
        // What the controller could not send explains the agent's complaint about it.
        (_, Err(e)) | (Err(e), Ok(_)) => {
            clock.step(&mut result, "stage", t, Err(e.clone()));
            send(HostEvent::Failed(e));
            (result, None)
        }
    }
}
