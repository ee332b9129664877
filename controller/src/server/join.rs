//! The agents' endpoint (`slipctl serve --join-listen ADDR`): HTTPS with a certificate of the
//! controller's own CA, followed by the CA bundle so that `slipd join --ca-sha256 PIN` finds
//! the CA it pinned in the handshake — before it sends its token. `POST /v1/join` takes a join
//! token and a certificate request; `POST /v1/renew` takes a request over the agent's current
//! certificate (a TLS client certificate). Nothing else is served there.
//!
//! Its TLS config follows the CA bundle: after `slipctl ca rotate` the next connection gets a
//! certificate of the new CA and trusts both.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::{Extension, Json, Router, routing};
use serde::Deserialize;

use crate::error::Result;
use crate::ops::joins::{Issued, JoinRequest};
use crate::server::App;
use crate::server::error::{ApiError, ApiResult, Body};
use crate::server::listen::{ClientCert, Peer, TlsSource};
use crate::state::home::Home;

/// How long the endpoint's own certificate lasts; a new one is made at each start and after
/// each CA change, so this only bounds a server that runs for months.
const ENDPOINT_CERT_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

/// Where agents join and renew, and for how long their certificates last.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    pub listen: SocketAddr,
    /// The URL the printed `slipd join` command names.
    pub url: String,
    pub lifetime: Duration,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/join", routing::post(join))
        .route("/v1/renew", routing::post(renew))
        .fallback(|| async {
            ApiError::not_found("no such route on the agents' endpoint", "POST /v1/join or /v1/renew")
        })
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(app)
}

/// The acceptor for each connection, made again when `pki/ca.pem` changes.
pub fn tls_source(home: Home) -> Result<TlsSource> {
    let make = {
        let home = home.clone();
        move |bundle: &str| -> Result<tokio_rustls::TlsAcceptor> {
            let issued = home.presenting_ca()?.0.issue_join_server(ENDPOINT_CERT_LIFETIME)?;
            let config = slipway_common::tls::join_server_config(bundle, &issued.cert_pem, &issued.key_pem)?;
            Ok(tokio_rustls::TlsAcceptor::from(config))
        }
    };
    let first = home.ca_bundle_pem()?;
    let current = Mutex::new((first.clone(), make(&first)?));
    Ok(Arc::new(move || {
        let mut slot = current.lock().expect("join tls");
        if let Ok(now) = home.ca_bundle_pem()
            && now != slot.0
        {
            match make(&now) {
                Ok(fresh) => *slot = (now, fresh),
                Err(e) => tracing::warn!("the agents' endpoint keeps its certificate: {e}"),
            }
        }
        slot.1.clone()
    }))
}

/// How long an agent's certificate lasts (`serve --agent-cert-ttl`).
fn lifetime(app: &App) -> Duration {
    app.join.as_ref().map_or(slipway_common::pki::AGENT_CERT_LIFETIME, |j| j.lifetime)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    csr: String,
}

async fn join(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Body(req): Body<JoinRequest>,
) -> ApiResult<Json<Issued>> {
    let Peer::Tcp(from) = peer else {
        return Err(ApiError::bad("agents join over TCP", "run slipd join on the host"));
    };
    let (lifetime, core, ip) = (lifetime(&app), app.core.clone(), from.ip());
    let answer =
        tokio::task::spawn_blocking(move || crate::ops::joins::join(&core.home, &core.store, &req, ip, lifetime))
            .await
            .map_err(|e| ApiError::from(crate::error::CtlError::failed(format!("join: {e}"))))?;
    match answer {
        Ok(issued) => {
            tracing::info!(agent = %issued.name, %from, "agent joined");
            app.metrics.join(true);
            crate::ops::catch_up::host_arrived(app.core.clone(), issued.name.clone());
            Ok(Json(issued))
        }
        Err(e) => {
            tracing::warn!(%from, "join refused: {e}");
            app.metrics.join(false);
            Err(e.into())
        }
    }
}

async fn renew(
    State(app): State<Arc<App>>,
    cert: Option<Extension<ClientCert>>,
    Body(body): Body<RenewBody>,
) -> ApiResult<Json<Issued>> {
    let Some(Extension(ClientCert(der))) = cert else {
        return Err(ApiError::unauthorized("renewal needs the agent's current certificate as the TLS client"));
    };
    let (lifetime, core) = (lifetime(&app), app.core.clone());
    let answer = tokio::task::spawn_blocking(move || {
        crate::ops::joins::renew(&core.home, &core.store, &der, &body.csr, lifetime)
    })
    .await
    .map_err(|e| ApiError::from(crate::error::CtlError::failed(format!("renew: {e}"))))?;
    match answer {
        Ok(issued) => {
            tracing::info!(agent = %issued.name, "agent certificate renewed");
            app.metrics.renewal(true);
            Ok(Json(issued))
        }
        Err(e) => {
            tracing::warn!("renewal refused: {e}");
            app.metrics.renewal(false);
            Err(e.into())
        }
    }
}
