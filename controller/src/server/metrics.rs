//! `GET /metrics` (Prometheus/OpenMetrics text, through `prometheus-client`): deploys by project,
//! env, kind and outcome; deploy and per-host stage durations; hosts per release per env (the
//! version spread); the last switch skew; agent reachability and certificate seconds-to-expiry
//! (an agent probe every 30 s); webhook deliveries and notification failures.
//!
//! Counts come from every operation that ends in this process (the engine's journal reports
//! each outcome here), seeded at start from history, so they are what history says.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::store::{DeployKind, DeployRecord, DeployStatus};

/// A label value, written escaped as OpenMetrics asks (`\\`, `\"`, `\n`): `prometheus-client`
/// writes label values as they are, so a value with a quote or a newline in it would end the
/// label and forge series. Every label of every family is a `Text`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Text(String);

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(s.to_owned())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(s)
    }
}

impl EncodeLabelValue for Text {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The label of a webhook delivery's project: only a project that exists is named (anyone can
/// post to `/hooks/<anything>`, and a label per made-up name would grow without bound).
pub const UNKNOWN_PROJECT: &str = "_unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    project: Text,
    env: Text,
    kind: Text,
    outcome: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Pair {
    project: Text,
    env: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairKind {
    project: Text,
    env: Text,
    kind: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Stage {
    stage: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OnRelease {
    project: Text,
    env: Text,
    release: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Agent {
    agent: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Delivery {
    project: Text,
    status: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: Text,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Sink {
    kind: Text,
}

fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

pub struct Metrics {
    registry: Registry,
    deploys: Family<Outcome, Counter>,
    deploy_seconds: Family<PairKind, Histogram, fn() -> Histogram>,
    stage_seconds: Family<Stage, Histogram, fn() -> Histogram>,
    hosts_on_release: Family<OnRelease, Gauge>,
    switch_skew: Family<Pair, Gauge<f64, AtomicU64>>,
    agent_up: Family<Agent, Gauge>,
    agent_cert_seconds: Family<Agent, Gauge>,
    webhooks: Family<Delivery, Counter>,
    notifications_failed: Family<Sink, Counter>,
    notifications_sent: Family<Sink, Counter>,
    login_failures: Family<Reason, Counter>,
    agent_joins: Family<Reason, Counter>,
    agent_renewals: Family<Reason, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("slipway");
        let m = Metrics {
            deploys: Family::default(),
            deploy_seconds: Family::new_with_constructor(seconds_buckets),
            stage_seconds: Family::new_with_constructor(seconds_buckets),
            hosts_on_release: Family::default(),
            switch_skew: Family::default(),
            agent_up: Family::default(),
            agent_cert_seconds: Family::default(),
            webhooks: Family::default(),
            notifications_failed: Family::default(),
            notifications_sent: Family::default(),
            login_failures: Family::default(),
            agent_joins: Family::default(),
            agent_renewals: Family::default(),
            registry: Registry::default(),
        };
        registry.register("deploys", "Deploys and rollbacks that ended, by outcome", m.deploys.clone());
        registry.register("deploy_duration_seconds", "Wall time of a deploy or rollback", m.deploy_seconds.clone());
        registry.register(
            "stage_duration_seconds",
            "Wall time of one host's step (stage, activate, health…)",
            m.stage_seconds.clone(),
        );
        registry.register(
            "hosts_on_release",
            "Hosts of an env on each release (the version spread)",
            m.hosts_on_release.clone(),
        );
        registry.register(
            "last_switch_skew_seconds",
            "Spread between the first and last host's flip in the last deploy",
            m.switch_skew.clone(),
        );
        registry.register("agent_up", "Whether the agent answered the last probe", m.agent_up.clone());
        registry.register(
            "agent_certificate_expiry_seconds",
            "Seconds until the agent's certificate expires",
            m.agent_cert_seconds.clone(),
        );
        registry.register("webhook_deliveries", "Webhook deliveries by answer status", m.webhooks.clone());
        registry.register(
            "notifications_failed",
            "Notifications given up on after their retries",
            m.notifications_failed.clone(),
        );
        registry.register("notifications_sent", "Notifications delivered", m.notifications_sent.clone());
        registry.register(
            "login_failures",
            "Logins refused: wrong password, throttled after failures, or every verifier busy",
            m.login_failures.clone(),
        );
        registry.register("agent_joins", "Joins on the agents' endpoint, issued or refused", m.agent_joins.clone());
        registry.register(
            "agent_certificate_renewals",
            "Agent certificate renewals, issued or refused",
            m.agent_renewals.clone(),
        );
        Metrics { registry, ..m }
    }

    /// An operation ended as `record` says.
    pub fn observe(&self, record: &DeployRecord) {
        if matches!(record.status, DeployStatus::Running | DeployStatus::Planned) {
            return;
        }
        if record.status == DeployStatus::Paused {
            return;
        }
        let kind = match record.kind {
            DeployKind::Deploy => "deploy",
            DeployKind::Rollback => "rollback",
        };
        let (project, env) = (record.project.clone(), record.env.clone());
        self.deploys
            .get_or_create(&Outcome {
                project: project.as_str().into(),
                env: env.as_str().into(),
                kind: kind.into(),
                outcome: record.effective_status().word().into(),
            })
            .inc();
        self.deploy_seconds
            .get_or_create(&PairKind { project: project.as_str().into(), env: env.as_str().into(), kind: kind.into() })
            .observe(record.duration_ms as f64 / 1000.0);
        let mut flips = Vec::new();
        for host in &record.hosts {
            for step in &host.steps {
                self.stage_seconds
                    .get_or_create(&Stage { stage: step.name.as_str().into() })
                    .observe(step.elapsed_ms as f64 / 1000.0);
                if step.name == "activate" && step.ok {
                    flips.push(step.started_ms + step.elapsed_ms);
                }
            }
        }
        if flips.len() > 1 {
            let skew = flips.iter().max().unwrap_or(&0) - flips.iter().min().unwrap_or(&0);
            self.switch_skew
                .get_or_create(&Pair { project: project.as_str().into(), env: env.as_str().into() })
                .set(skew as f64 / 1000.0);
        }
    }

    /// A webhook delivery was answered `status`; `project` is [`UNKNOWN_PROJECT`] unless it exists.
    pub fn webhook(&self, project: &str, status: &str) {
        self.webhooks.get_or_create(&Delivery { project: project.into(), status: status.into() }).inc();
    }

    pub fn login_failure(&self, reason: &str) {
        self.login_failures.get_or_create(&Reason { reason: reason.into() }).inc();
    }

    /// A join on the agents' endpoint: issued, or refused.
    pub fn join(&self, issued: bool) {
        let reason = if issued { "issued" } else { "refused" };
        self.agent_joins.get_or_create(&Reason { reason: reason.into() }).inc();
    }

    /// A renewal on the agents' endpoint: issued, or refused.
    pub fn renewal(&self, issued: bool) {
        let reason = if issued { "issued" } else { "refused" };
        self.agent_renewals.get_or_create(&Reason { reason: reason.into() }).inc();
    }

    pub fn notification(&self, kind: &str, delivered: bool) {
        let family = if delivered { &self.notifications_sent } else { &self.notifications_failed };
        family.get_or_create(&Sink { kind: kind.into() }).inc();
    }

    /// What the last probe of `agent` found: reachable, and its certificate's expiry (unix s).
    pub fn agent(&self, agent: &str, up: bool, cert_not_after: Option<i64>) {
        let labels = Agent { agent: agent.into() };
        self.agent_up.get_or_create(&labels).set(i64::from(up));
        if let Some(at) = cert_not_after {
            self.agent_cert_seconds.get_or_create(&labels).set(at - slipway_common::time::unix_now());
        }
    }

    /// Forget what the last probe found (agents removed since drop out).
    pub fn clear_agents(&self) {
        self.agent_up.clear();
        self.agent_cert_seconds.clear();
    }

    /// The text `/metrics` answers (the version spread from `views`).
    pub fn encode(&self, views: &crate::ops::views::Views) -> String {
        self.hosts_on_release.clear();
        for ((project, env), hosts) in views.all_hosts().iter() {
            for release in hosts.values() {
                self.hosts_on_release
                    .get_or_create(&OnRelease {
                        project: project.as_str().into(),
                        env: env.as_str().into(),
                        release: release.as_str().into(),
                    })
                    .inc();
            }
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
