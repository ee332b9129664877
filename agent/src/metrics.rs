//! The agent's `/metrics` (Prometheus/OpenMetrics text), served over plain HTTP on
//! `metrics_listen` when agent.toml sets it: stages and activations by result with their
//! durations, archive bytes received, bytes reused from retained releases, and free disk per
//! target (read through the target's held directory handle, like everything under a root).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::layout::{Layout, Open};
use crate::state::AgentState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Result_ {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Target {
    project: String,
    env: String,
}

fn buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

pub struct AgentMetrics {
    registry: Registry,
    stages: Family<Result_, Counter>,
    stage_seconds: Histogram,
    activations: Family<Result_, Counter>,
    activate_seconds: Histogram,
    received_bytes: Counter,
    reused_bytes: Counter,
    disk_free_bytes: Family<Target, Gauge>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("slipd");
        let m = AgentMetrics {
            registry: Registry::default(),
            stages: Family::default(),
            stage_seconds: buckets(),
            activations: Family::default(),
            activate_seconds: buckets(),
            received_bytes: Counter::default(),
            reused_bytes: Counter::default(),
            disk_free_bytes: Family::default(),
        };
        registry.register("stages", "Stages by result", m.stages.clone());
        registry.register("stage_duration_seconds", "Time from a stage's header to staged", m.stage_seconds.clone());
        registry.register("activations", "Activations by result", m.activations.clone());
        registry.register(
            "activate_duration_seconds",
            "Time from an activation's request to its reply",
            m.activate_seconds.clone(),
        );
        registry.register(
            "received_bytes",
            "Archive bytes received in stages that completed",
            m.received_bytes.clone(),
        );
        registry.register(
            "reused_bytes",
            "File bytes taken from retained releases instead of the wire",
            m.reused_bytes.clone(),
        );
        registry.register(
            "disk_free_bytes",
            "Free bytes on the filesystem of each target's releases",
            m.disk_free_bytes.clone(),
        );
        AgentMetrics { registry, ..m }
    }
}

impl AgentMetrics {
    pub fn staged(&self, elapsed_ms: u64, received: u64, reused: u64) {
        self.stages.get_or_create(&Result_ { result: "ok".into() }).inc();
        self.stage_seconds.observe(elapsed_ms as f64 / 1000.0);
        self.received_bytes.inc_by(received);
        self.reused_bytes.inc_by(reused);
    }

    pub fn stage_failed(&self) {
        self.stages.get_or_create(&Result_ { result: "failed".into() }).inc();
    }

    pub fn activated(&self, ok: bool, elapsed_ms: u64) {
        let result = if ok { "ok" } else { "failed" };
        self.activations.get_or_create(&Result_ { result: result.into() }).inc();
        if ok {
            self.activate_seconds.observe(elapsed_ms as f64 / 1000.0);
        }
    }

    /// The text `/metrics` answers (free disk read now, target by target).
    pub fn encode(&self, state: &AgentState, roots: &[std::path::PathBuf]) -> String {
        self.disk_free_bytes.clear();
        for record in state.all_lenient().0 {
            let Ok(layout) = Layout::open(roots, &record.deploy_to, &record.current, Open::Existing) else { continue };
            let Ok(releases) = layout.releases() else { continue };
            if let Ok(stat) = rustix::fs::fstatvfs(releases.fd()) {
                let free = stat.f_bavail.saturating_mul(stat.f_frsize);
                self.disk_free_bytes
                    .get_or_create(&Target { project: record.project.clone(), env: record.env.clone() })
                    .set(i64::try_from(free).unwrap_or(i64::MAX));
            }
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serve `/metrics` on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<AgentMetrics>,
    state: AgentState,
    roots: Vec<std::path::PathBuf>,
) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let (metrics, state, roots) = (metrics.clone(), state.clone(), roots.clone());
            async move {
                let text =
                    tokio::task::spawn_blocking(move || metrics.encode(&state, &roots)).await.unwrap_or_default();
                (
                    [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    text,
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}
