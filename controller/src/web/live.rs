//! The pages' live streams: Server-Sent Events of HTML fragments rendered here (the script
//! only puts them in place). A stream renders its fragments when it opens, then each time
//! something a page shows changes ([`journal::changes`]), at most once a second, and sends
//! only the fragments that differ from what it sent before.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::server::App;
use crate::state::journal;

/// The fastest a live page is sent changes.
pub const AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// Fragments by key (a dashboard cell, a ticket's head), as HTML.
pub type Fragments = BTreeMap<String, String>;

/// An event stream, as the response it is.
pub type EventStream = axum::response::Response;

/// The query of a live stream: the change count its page was rendered at.
#[derive(serde::Deserialize)]
pub struct Since {
    #[serde(default)]
    pub since: Option<u64>,
}

/// The `data-live` URL of a page's stream: `path`, with the change count now (read before the
/// page renders, so a change made while it renders is sent when the stream opens).
pub fn url(path: &str) -> String {
    format!("{path}?since={}", journal::change_count())
}

fn fragment(key: &str, html: &str) -> SseEvent {
    SseEvent::default().event("fragment").data(serde_json::json!({"key": key, "html": html}).to_string())
}

/// A stream of `fragment` events (`{"key", "html"}`) from `render`; `reload` when the set of
/// keys changes (something appeared or went: the page is rendered again whole). When anything
/// changed since the page was rendered (`since`), every fragment is sent at once.
pub fn fragments(
    app: Arc<App>,
    caller: &crate::server::auth::Caller,
    since: Option<u64>,
    render: impl Fn(&App) -> Option<Fragments> + Send + 'static,
) -> EventStream {
    // (Each stream holds a connection: a caller has at most so many.)
    let slot = match crate::server::sse::open_stream(&app, caller) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = mpsc::channel::<SseEvent>(16);
    tokio::spawn(async move {
        let _slot = slot;
        let mut changes = journal::changes();
        let stale = since != Some(*changes.borrow_and_update());
        let mut stopping = app.stopping.subscribe();
        let Some(mut sent) = render(&app) else { return };
        if stale {
            for (key, html) in &sent {
                if tx.send(fragment(key, html)).await.is_err() {
                    return;
                }
            }
        }
        let mut last = Instant::now();
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = crate::server::listen::until_stop(&mut stopping) => return,
                _ = tx.closed() => return,
            }
            tokio::time::sleep_until(last + AT_MOST_EVERY).await;
            changes.borrow_and_update();
            last = Instant::now();
            let Some(now) = render(&app) else { return };
            if now.keys().ne(sent.keys()) {
                // (Data, however little: a browser drops an event whose data is empty.)
                let _ = tx.send(SseEvent::default().event("reload").data("{}")).await;
                return;
            }
            for (key, html) in &now {
                if sent.get(key) != Some(html) && tx.send(fragment(key, html)).await.is_err() {
                    return;
                }
            }
            sent = now;
        }
    });
    stream(rx)
}

/// The events sent on `rx`, as an SSE response (a comment every 15 s keeps proxies from
/// closing it).
pub fn stream(rx: mpsc::Receiver<SseEvent>) -> EventStream {
    let events = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}
