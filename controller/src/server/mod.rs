//! `slipctl serve`: the controller as a team's service (DESIGN.md "Server"). It owns the home
//! for as long as it runs (the store is pinned open in this process), serves the HTTP API on
//! TCP (optionally TLS) and on `<home>/slipctl.sock`, through which every local `slipctl`
//! command is carried out here, and stops cleanly on SIGTERM: running deploys are cancelled to
//! a safe point and recorded, tickets read `interrupted`, never `deploying`.
//!
//! Split by job: `listen` (sockets, TLS, connection limits), `auth` (who calls and whether they
//! may: one middleware), `api` (the routes), `tickets` (the approval workflow), `runs` (the
//! operations this server carries out), `sse` (event streams), `exec` (slipctl commands run
//! here for a client), `error` (the API's refusals).

pub mod admin;
pub mod api;
pub mod artifacts;
pub mod auth;
pub mod error;
pub mod exec;
pub mod governance;
pub mod join;
pub mod lead;
pub mod listen;
pub mod login;
pub mod metrics;
pub mod notify;
pub mod projects;
pub mod sign_in;
pub mod sse;
pub mod tickets;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use crate::cli::args_team::ServeArgs;
use crate::error::{Context, CtlError, Result};
use crate::state::home::Home;
use crate::state::store::Store;

/// The largest request body accepted (413 beyond).
pub const BODY_LIMIT: usize = 1 << 20;
/// CI push payloads list commits and can be larger.
pub const WEBHOOK_BODY_LIMIT: usize = 16 << 20;
/// Webhook body bytes held in memory at once, across all deliveries (503 beyond: CI retries).
pub const WEBHOOK_BYTES_IN_FLIGHT: usize = 32 << 20;
/// How long SIGTERM waits for running deploys to reach a safe point.
const STOP_WAIT: Duration = Duration::from_secs(120);

/// What every handler shares: the operations' [`Core`](crate::ops::Core) (its home, store,
/// runs; `app.store` reads through to it) and what the HTTP server adds.
pub struct App {
    pub core: Arc<crate::ops::Core>,
    /// Cookies are `Secure` and HSTS is sent: the server speaks TLS, or people reach it by an
    /// `https://` `--public-url` (TLS ends at a proxy in front).
    pub secure_cookies: bool,
    pub started_at: i64,
    /// Where people reach the server (`--public-url`, else the listen address), for links.
    pub public_url: String,
    pub metrics: metrics::Metrics,
    /// Webhook body bytes in memory now, out of [`WEBHOOK_BYTES_IN_FLIGHT`].
    pub webhook_budget: Arc<tokio::sync::Semaphore>,
    /// Password checks and the failed-login budgets.
    pub logins: login::Logins,
    /// Event streams open per principal.
    pub streams: sse::Streams,
    /// The agents' endpoint, when hosts may join.
    pub join: Option<join::JoinConfig>,
    /// Company sign-in (`[sign_in]`): LDAP/AD, OpenID Connect, the groups' grants.
    pub sign_in: crate::ops::sign_in::SignIn,
    /// Where the audit trail is shipped (`[audit]`), read and checked at start.
    pub audit: Arc<crate::ops::audit::Shipping>,
}

impl std::ops::Deref for App {
    type Target = crate::ops::Core;

    fn deref(&self) -> &crate::ops::Core {
        &self.core
    }
}

/// Run the server until SIGTERM or Ctrl-C.
pub async fn serve(home: Home, args: ServeArgs) -> Result<u8> {
    if !home.pki().join("ca.pem").exists() {
        return Err(CtlError::bad(format!("{} is not initialised", home.root.display()))
            .fix("run `slipctl init` first (or give --home)"));
    }
    slipway_common::process::raise_fd_limit();
    let socket_path = home.root.join("slipctl.sock");
    let unix = listen::bind_socket(&socket_path).await?;
    shared_state_checks(&home)?;
    let config = crate::state::home::HomeConfig::load(&home.root)?;
    let audit = crate::ops::audit::Shipping::prepare(config.audit, &home.root)?;
    let sign_in = crate::ops::sign_in::SignIn::load(&home.root, config.sign_in)?;
    let store = Store::pin(&home.state())?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(slipway_common::tls::https_server_config(cert, key)?);
            Some(Arc::new(move || acceptor.clone()) as listen::TlsSource)
        }
        _ => None,
    };
    let tcp =
        tokio::net::TcpListener::bind(args.listen).await.context(format_args!("cannot listen on {}", args.listen))?;
    let local = tcp.local_addr().context("listen address")?;
    let core = Arc::new(crate::ops::Core::new(home.clone(), store));
    let joins = match args.join_listen {
        None => None,
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr).await.context(format_args!("cannot listen on {addr} for agents"))?,
        ),
    };
    let stop_rx = core.stopping.subscribe();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let public_url = args.public_url.clone().unwrap_or_else(|| format!("{scheme}://{local}"));
    let secure_cookies = tls.is_some() || public_url.starts_with("https://");
    let join_config = match &joins {
        None => None,
        Some(listener) => {
            let at = listener.local_addr().context("join listen address")?;
            let host = url_host(&public_url).unwrap_or_else(|| local.ip().to_string());
            let url = args.join_url.clone().unwrap_or_else(|| format!("https://{host}:{}", at.port()));
            let url = url.trim_end_matches('/').to_owned();
            let _ = core.join_url.set(url.clone());
            Some(join::JoinConfig { listen: at, url, lifetime: args.agent_cert_ttl })
        }
    };
    let app = Arc::new(App {
        core,
        secure_cookies,
        started_at: slipway_common::time::unix_now(),
        public_url: public_url.trim_end_matches('/').to_owned(),
        metrics: metrics::Metrics::new(),
        webhook_budget: Arc::new(tokio::sync::Semaphore::new(WEBHOOK_BYTES_IN_FLIGHT)),
        logins: login::Logins::default(),
        streams: sse::Streams::default(),
        join: join_config,
        sign_in,
        audit: Arc::new(audit),
    });
    // The server's notifications hear of ticket changes.
    let notifying = Arc::downgrade(&app);
    let _ = app.core.on_ticket.set(Box::new(move |event, ticket, by| {
        if let Some(app) = notifying.upgrade() {
            notify::on_ticket(&app, event, ticket, by);
        }
    }));
    // The counters start from history, then follow every operation that ends here.
    for d in app.store.deploys(None, None, usize::MAX)?.iter().rev() {
        app.metrics.observe(d);
        app.views.observe(d);
    }
    let observing = Arc::downgrade(&app);
    crate::engine::journal::observe(move |happened| {
        if let Some(app) = observing.upgrade() {
            if let crate::engine::journal::Happened::Ended(record) = &happened {
                app.metrics.observe(record);
                app.views.observe(record);
            }
            notify::on_operation(&app, &happened);
        }
    });
    // Alone (sled), this server leads; sharing a database, it leads or stands by.
    let session = lead::start(&app).await?;
    let recovered = if session.is_none() {
        let recovered = crate::ops::tickets::recover(&app.core, false)?;
        start_leader_loops(&app);
        recovered
    } else {
        0
    };
    let router = api::router(app.clone());
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let serving = listen::Serving::new(router, stop_rx, graceful.clone());
    let mut accepting = vec![tokio::spawn(serving.clone().tcp(tcp, tls)), tokio::spawn(serving.clone().unix(unix))];
    let join_serving = match (joins, &app.join) {
        (Some(listener), Some(config)) => {
            let source = join::tls_source(home.clone())?;
            let serving = listen::Serving::new(join::router(app.clone()), app.stopping.subscribe(), graceful.clone());
            accepting.push(tokio::spawn(serving.clone().tcp(listener, Some(source))));
            println!("slipctl serve: agents join at {} (listening on {})", config.url, config.listen);
            Some(serving)
        }
        _ => None,
    };
    // The line scripts and tests wait for: the server answers from now on.
    println!(
        "slipctl serve: listening on {scheme}://{local} and {} (people reach it at {})",
        socket_path.display(),
        app.public_url
    );
    if recovered > 0 {
        println!("{recovered} ticket(s) whose deploy was interrupted by the last stop now read interrupted");
    }

    wait_for_stop().await;
    println!("stopping: cancelling running deploys cleanly");
    app.stopping.send_replace(true);
    let stopped = crate::ops::runs::stop_all(&app.core, STOP_WAIT).await;
    if !stopped {
        eprintln!("some deploys did not reach a safe point in {}s; they read interrupted", STOP_WAIT.as_secs());
    }
    drop(serving);
    drop(join_serving);
    for task in accepting {
        let _ = task.await;
    }
    // Open connections finish what they are answering (event streams end with the server).
    if let Ok(graceful) = Arc::try_unwrap(graceful) {
        let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    }
    let _ = std::fs::remove_file(&socket_path);
    app.store.flush()?;
    Store::unpin(&home.state());
    println!("stopped");
    Ok(0)
}

/// What only the leader does in the background: probe the agents every 30 s.
pub(crate) fn start_leader_loops(app: &Arc<App>) {
    let probed = app.clone();
    tokio::spawn(crate::ops::agents::probe_every(app.core.clone(), Duration::from_secs(30), move |found| {
        probed.metrics.clear_agents();
        for (name, p) in found {
            probed.metrics.agent(name, p.reachable, p.cert_not_after);
        }
    }));
    // Tickets that start by themselves: held by a freeze or a window, or scheduled.
    tokio::spawn(crate::ops::waiting::run(app.core.clone()));
    // The audit trail, shipped in order to syslog and/or OTLP when `[audit]` says where.
    tokio::spawn(crate::ops::audit::ship(app.store.clone(), app.audit.clone()));
}

/// With a shared database: one that holds nothing while this home's own sled state holds
/// history is refused (a wrong URL, or a home not migrated yet: serving would start a second,
/// empty history). Checked before the state is opened for good (which shares the CA through it).
fn shared_state_checks(home: &Home) -> Result<()> {
    let Some(db) = crate::state::home::database_of(&home.state())? else { return Ok(()) };
    let shared = Store::open_postgres(&db)?;
    let empty = shared.deploys(None, None, 1)?.is_empty() && shared.projects()?.is_empty();
    if empty && home.state().join("db").exists() {
        let local = Store::open_sled(&home.state()).and_then(|s| Ok(s.deploys(None, None, 1)?.len()));
        if local.is_ok_and(|n| n > 0) {
            return Err(CtlError::bad(format!(
                "the database at {} holds no history, while this home's own state ({}) does",
                crate::state::postgres::shown(&db.url),
                home.state().display()
            ))
            .fix(format!(
                "move it there first (`slipctl state migrate --from sled --to {}`), or point [state] url at the \
                 database the other nodes use",
                crate::state::postgres::shown(&db.url)
            )));
        }
    }
    if crate::state::home::key_file_of(&home.root)?.is_none() {
        println!(
            "slipctl serve: [state] key_file is not set: the CA stays in this home, and a standby on another home \
             cannot reach the agents"
        );
    }
    Ok(())
}

/// The host of a URL (`https://ctl.example:8443/x` → `ctl.example`).
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    (!host.is_empty()).then(|| host.to_owned())
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
