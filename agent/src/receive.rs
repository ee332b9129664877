//! Receiving an upload: the archive chunks pushed from the RPC stream through a bounded channel
//! into the extractor on a blocking thread, with a deadline, and stopped as soon as the
//! controller goes away. Disk-space checks and ENOSPC reporting.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use slipway_common::archive::{ExtractOptions, Manifest, extract_into};
use slipway_proto::pb;
use slipway_proto::pb::stage_event::Kind as EventKind;
use slipway_proto::pb::stage_request::Kind as RequestKind;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::error::AgentError;

const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// A write that failed for lack of space becomes a message with the bytes needed and free.
pub fn disk_full(e: AgentError, dir: &Path, needed: &u64) -> AgentError {
    let enospc = match &e {
        AgentError::Archive(slipway_common::archive::ArchiveError::Write { source, .. }) => source.raw_os_error(),
        AgentError::Io { source, .. } => source.raw_os_error(),
        _ => None,
    } == Some(rustix::io::Errno::NOSPC.raw_os_error());
    if !enospc {
        return e;
    }
    let free = rustix::fs::statvfs(dir).map(|s| s.f_bavail.saturating_mul(s.f_frsize)).unwrap_or(0);
    AgentError::DiskFull { path: dir.to_path_buf(), needed: *needed, free }
}

pub fn check_free_space(dir: &Path, fd: impl AsFd, manifest: &Manifest) -> Result<(), AgentError> {
    let stat = rustix::fs::fstatvfs(fd).map_err(|e| AgentError::io("cannot stat filesystem of", dir, e.into()))?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    // File bytes, plus a block per entry for small files and directories.
    let needed = manifest.file_bytes() + manifest.entries.len() as u64 * 4096;
    if free < needed { Err(AgentError::DiskFull { path: dir.to_path_buf(), needed, free }) } else { Ok(()) }
}

/// Reads archive chunks that the async side pushes through a bounded channel.
struct ChunkReader {
    rx: mpsc::Receiver<Result<Vec<u8>, String>>,
    buf: Vec<u8>,
    pos: usize,
    deadline: Instant,
    /// The stage's event stream: closed when the controller went away.
    events: mpsc::Sender<Result<pb::StageEvent, Status>>,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if Instant::now() > self.deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the stage ran past its deadline"));
        }
        if self.events.is_closed() {
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the controller went away"));
        }
        while self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Some(Err(why)) => return Err(io::Error::other(why)),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Tell the extractor why its input stops (it fails with that), and hand the error back.
async fn stop(chunk_tx: &mpsc::Sender<Result<Vec<u8>, String>>, error: AgentError) -> AgentError {
    let _ = chunk_tx.send(Err(error.to_string())).await;
    error
}

/// Where the archive's bytes come from: the stage call's own stream, or the store's answer to
/// the presigned URL of the header.
pub enum Source {
    Stream(Streaming<pb::StageRequest>),
    Fetched { body: hyper::body::Incoming, url: String },
}

/// Pass the store's body to the extractor until it ends, the deadline passes or the extractor
/// stops; the error, if the fetch broke.
async fn fetch_into(
    mut body: hyper::body::Incoming,
    url: &str,
    chunk_tx: &mpsc::Sender<Result<Vec<u8>, String>>,
    deadline: Instant,
) -> Option<AgentError> {
    use http_body_util::BodyExt;
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = tokio::time::sleep_until(deadline.into()) => {
                let late = AgentError::Upload("the fetch from the artifact store ran past the stage deadline".into());
                return Some(stop(chunk_tx, late).await);
            }
        };
        match frame {
            None => return None,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                if chunk_tx.send(Ok(data.to_vec())).await.is_err() {
                    return None; // The extractor stopped early; its result says why.
                }
            }
            Some(Err(e)) => {
                return Some(
                    stop(
                        chunk_tx,
                        AgentError::Upload(format!(
                            "the fetch from the artifact store ({}) broke: {e}",
                            crate::fetch::redact(url)
                        )),
                    )
                    .await,
                );
            }
        }
    }
}

/// Pump the upload into the extractor (on a blocking thread) with bounded buffering, so neither
/// side holds the whole artifact; forward progress to the caller.
#[allow(clippy::too_many_arguments)]
pub async fn receive_and_extract(
    source: Source,
    manifest: Arc<Manifest>,
    staging: OwnedFd,
    display: String,
    options: ExtractOptions,
    trailer_digest: bool,
    events: mpsc::Sender<Result<pb::StageEvent, Status>>,
    deadline: Instant,
) -> Result<slipway_common::archive::ExtractStats, AgentError> {
    let (chunk_tx, chunk_rx) = mpsc::channel::<Result<Vec<u8>, String>>(8);
    let progress_events = events.clone();
    let reader_events = events.clone();
    let extractor = tokio::task::spawn_blocking(move || {
        let reader = ChunkReader { rx: chunk_rx, buf: Vec::new(), pos: 0, deadline, events: reader_events };
        let mut last = Instant::now();
        let mut progress = |entries: u64, bytes: u64| {
            if last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                let event = pb::StageEvent {
                    kind: Some(EventKind::Progress(pb::StageProgress {
                        step: "unpack".into(),
                        bytes_received: bytes,
                        entries_written: entries,
                    })),
                };
                let _ = progress_events.try_send(Ok(event));
            }
        };
        extract_into(reader, &manifest, staging, &display, &options, &mut progress)
    });
    let mut upload_error = None;
    let mut trailer: Option<pb::StageTrailer> = None;
    let mut stream = match source {
        Source::Stream(stream) => stream,
        Source::Fetched { body, url } => {
            upload_error = fetch_into(body, &url, &chunk_tx, deadline).await;
            drop(chunk_tx);
            let result = extractor.await.map_err(|e| AgentError::State(format!("extractor task failed: {e}")))?;
            return match (result, upload_error) {
                (Ok(stats), None) => Ok(stats),
                (_, Some(upload)) => Err(upload),
                // Other bytes than the controller packaged: the store is trusted for nothing.
                (Err(e), None) if !e.is_local_io() => Err(AgentError::Upload(format!(
                    "the artifact store returned other bytes than the controller uploaded to {} ({e}); nothing was \
                     activated: deploy again (the controller uploads the artifact again)",
                    crate::fetch::redact(&url)
                ))),
                (Err(e), None) => Err(e.into()),
            };
        }
    };
    loop {
        let next = tokio::select! {
            next = stream.message() => next,
            () = tokio::time::sleep_until(deadline.into()) => {
                let late = AgentError::Upload("the upload ran past the stage deadline".into());
                upload_error = Some(stop(&chunk_tx, late).await);
                break;
            }
        };
        match next {
            Ok(Some(pb::StageRequest { kind: Some(RequestKind::Chunk(chunk)) })) if trailer.is_none() => {
                if chunk_tx.send(Ok(chunk)).await.is_err() {
                    break; // The extractor stopped early; its result says why.
                }
            }
            Ok(Some(pb::StageRequest { kind: Some(RequestKind::Trailer(t)) }))
                if trailer_digest && trailer.is_none() =>
            {
                trailer = Some(t);
            }
            Ok(Some(_)) => {
                upload_error = Some(
                    stop(
                        &chunk_tx,
                        AgentError::BadRequest(
                            "unexpected message after the header: only archive chunks, then a trailer when the header \
                           has no digest, may follow"
                                .to_string(),
                        ),
                    )
                    .await,
                );
                break;
            }
            Ok(None) => break,
            Err(status) => {
                upload_error = Some(
                    stop(&chunk_tx, AgentError::Upload(format!("the upload stream broke: {}", status.message()))).await,
                );
                break;
            }
        }
    }
    drop(chunk_tx);
    let result = extractor.await.map_err(|e| AgentError::State(format!("extractor task failed: {e}")))?;
    match (result, upload_error) {
        (Ok(stats), None) if trailer_digest => match trailer {
            None => Err(AgentError::Upload("the upload ended without the trailer carrying the artifact digest".into())),
            Some(t) if t.artifact_sha256 != stats.sha256 || t.artifact_size != stats.compressed_bytes => {
                Err(slipway_common::archive::ArchiveError::ArtifactDigest {
                    actual: format!(
                        "{} ({} bytes)",
                        slipway_proto::bytes_to_hex(&stats.sha256),
                        stats.compressed_bytes
                    ),
                    expected: format!(
                        "{} ({} bytes)",
                        slipway_proto::bytes_to_hex(&t.artifact_sha256),
                        t.artifact_size
                    ),
                }
                .into())
            }
            Some(_) => Ok(stats),
        },
        (Ok(stats), None) => Ok(stats),
        (_, Some(upload)) => Err(upload),
        (Err(e), None) => Err(e.into()),
    }
}
