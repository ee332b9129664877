//! One fan-out for every operation on many hosts: run a future per host, stream their events
//! to the reporter, stop on cancel.
use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::engine::client::Timeouts;
use crate::engine::events::{Emitter, HostEvent};

use super::host_ops::*;

pub(crate) type Events = mpsc::UnboundedSender<(String, HostEvent)>;

/// What every per-host task of one phase shares.
#[derive(Clone)]
pub(crate) struct Fanout {
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) events: Events,
    pub(crate) clock: Arc<Clock>,
    pub(crate) timeouts: Timeouts,
}

/// Drain host events into the reporter until every sender is gone.
pub(crate) async fn pump(mut rx: mpsc::UnboundedReceiver<(String, HostEvent)>, reporter: &Emitter) {
    while let Some((host, event)) = rx.recv().await {
        reporter.host(&host, event);
    }
}

/// Resolves when the operator cancels (never when there is no cancel channel).
pub(crate) async fn cancelled(cancel: &mut Option<watch::Receiver<bool>>) {
    match cancel {
        Some(rx) => {
            while !*rx.borrow() {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
        None => std::future::pending().await,
    }
}

pub(crate) fn is_cancelled(cancel: &Option<watch::Receiver<bool>>) -> bool {
    cancel.as_ref().is_some_and(|rx| *rx.borrow())
}

/// Run `op` on every host in parallel, pumping their events into the reporter. With a cancel
/// channel, a cancel aborts what is still running (those hosts are missing from the result).
pub(crate) async fn fan_out<T, F, Fut>(
    hosts: &[String],
    reporter: &Emitter,
    cancel: &mut Option<watch::Receiver<bool>>,
    op: F,
) -> BTreeMap<String, T>
where
    T: Send + 'static,
    F: Fn(String, Events) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for host in hosts {
        let fut = op(host.clone(), tx.clone());
        let host = host.clone();
        tasks.spawn(async move { (host, fut.await) });
    }
    drop(tx);
    let collect = async {
        let mut out = BTreeMap::new();
        let mut aborted = false;
        loop {
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    Some(Ok((host, value))) => { out.insert(host, value); }
                    Some(Err(_)) => {}
                    None => break,
                },
                () = cancelled(cancel), if !aborted => {
                    aborted = true;
                    tasks.abort_all();
                }
            }
        }
        out
    };
    let (out, ()) = tokio::join!(collect, pump(rx, reporter));
    out
}

/// [`fan_out`] for a question with no events and no cancel: every host's answer, in the order
/// of `hosts`.
pub(crate) async fn ask_all<T, F, Fut>(hosts: &[String], op: F) -> Vec<(String, T)>
where
    T: Send + 'static,
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let mut answers = fan_out(hosts, &Emitter::discard(), &mut None, |host, _events| op(host)).await;
    hosts.iter().filter_map(|h| answers.remove(h).map(|a| (h.clone(), a))).collect()
}
