//! Config files: the agent's `agent.toml` and the project file. Both are parsed with
//! `deny_unknown_fields` and validated into typed values before any I/O happens.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::names::{validate_agent_name, validate_name};
use crate::{Error, Result};

mod agent;
mod drain;
mod resolve;
pub mod server;
pub mod windows;
pub use agent::*;
pub use drain::*;
use resolve::resolve_env;

/// Names a hook's environment may take from the project's `vars`: letters, digits and `_`, not
/// starting with a digit, and none that Slipway sets itself or that change how programs load.
pub fn check_var_key(key: &str) -> std::result::Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    let shown = crate::archive::clip(key, 64);
    if !ok || key.starts_with("SLIPWAY_") {
        return Err(format!("vars.{shown}: use letters, digits and '_' (not starting with a digit or SLIPWAY_)"));
    }
    const RESERVED: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "SHELL", "IFS", "ENV", "BASH_ENV"];
    if RESERVED.contains(&key) || key.starts_with("LD_") {
        return Err(format!(
            "vars.{shown}: slipd sets {shown} itself or it changes how programs run; pick another name"
        ));
    }
    Ok(())
}

/// An absolute path with no `.`/`..` components: what every on-host path must be.
pub fn check_clean_absolute(path: &Path) -> std::result::Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("'{}' must be an absolute path", path.display()));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(format!("'{}' must not contain '.' or '..'", path.display()));
    }
    Ok(())
}

fn toml_message(e: &toml::de::Error) -> String {
    // toml's Display spans several lines with a caret excerpt; keep it, indented for readability.
    e.to_string().trim_end().replace('\n', "\n  ")
}

// ---------------------------------------------------------------------------------------------
// Project file

/// Fields that both the project's top level and every `[env.X]` table may set.
macro_rules! settings_struct {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($extra:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        $vis struct $name {
            $($extra)*
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub repo: Option<String>,
            /// `git` (the default) or `svn`.
            #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
            pub repo_type: Option<RepoType>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub default_ref: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub keep_releases: Option<u32>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub exclude: Option<Vec<String>>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub vars: Option<BTreeMap<String, String>>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub build: Option<BuildFile>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub target: Option<TargetFile>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub rollout: Option<RolloutFile>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub hosts: Option<Vec<String>>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub canary: Option<Vec<String>>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub config_dir: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub reuse: Option<ReuseMode>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub approval: Option<server::ApprovalFile>,
            /// When deploys may start: `["Mon-Thu 10:00-16:00 Asia/Shanghai"]` (none: always).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub windows: Option<Vec<String>>,
            /// A host that joins (or comes back) and matches `hosts` gets the env's current
            /// release, as a deploy by `join:<name>`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub catch_up: Option<bool>,
        }
    };
}

settings_struct! {
    /// The project file as written (`slipctl project apply -f FILE`).
    pub struct ProjectFile {
        pub name: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub env: BTreeMap<String, EnvFile>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub webhook: Vec<server::WebhookRule>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub notify: Vec<server::NotifyFile>,
    }
}

settings_struct! {
    /// One `[env.X]` table: overrides any key of the project.
    pub struct EnvFile {
        /// This env takes only builds that ran in that env first (a deploy there succeeded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub promote_from: Option<String>,
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildFile {
    pub pre_deploy: Option<Vec<String>>,
    pub post_deploy: Option<Vec<String>>,
    pub timeout_secs: Option<u64>,
    /// Paths kept between builds of the project: inside the checkout (`node_modules`) or the
    /// build's home (`~/.m2/repository`).
    pub cache: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    pub user: Option<String>,
    pub deploy_to: Option<String>,
    pub current: Option<String>,
    pub shared: Option<Vec<String>>,
    pub pre_release: Option<Vec<String>>,
    pub post_release: Option<Vec<String>>,
    pub hook_timeout_secs: Option<u64>,
    /// Which release hooks a rollback runs: `["post_release"]` unless set.
    pub rollback_hooks: Option<Vec<HookStage>>,
    /// Lines run once per deploy on one host (the first canary, or `migrate_host`), in the new
    /// release, after every host staged and before any flip (database migrations).
    pub migrate: Option<Vec<String>>,
    pub migrate_host: Option<String>,
    /// `"during_migrate"`: every host of the deploy shows its maintenance page from just
    /// before `migrate` runs until the deploy ends; `"off"` (the default): never by itself.
    pub maintenance: Option<String>,
    /// The page's words then.
    pub maintenance_message: Option<String>,
}

/// A release hook stage, as `rollback_hooks` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookStage {
    PreRelease,
    PostRelease,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    pub strategy: Option<Strategy>,
    pub batch: Option<BatchSize>,
    pub delay_secs: Option<u64>,
    pub max_failures: Option<u32>,
    pub auto_rollback: Option<bool>,
    pub health: Option<HealthFile>,
    /// How long a host may stay silent (connect, calls, HTTP/2 keepalive) before it counts as failed.
    pub host_timeout_secs: Option<u64>,
    /// How long one host's stage (upload, unpack, verify, `pre_release` aside) may take.
    pub stage_timeout_secs: Option<u64>,
    /// Take each host out of its load balancer around its flip.
    pub drain: Option<DrainFile>,
    /// Stop after the canary batch until a person says `slipctl promote` (or `abort`).
    pub canary_pause: Option<bool>,
    /// Keep the canary out of the balancer while paused (to test it against production's
    /// interfaces without serving users).
    pub canary_keep_drained: Option<bool>,
    /// A pause longer than this aborts the deploy.
    pub canary_pause_timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub http: Option<String>,
    pub command: Option<String>,
    pub expect_status: Option<u16>,
    pub timeout_secs: Option<u64>,
    pub retries: Option<u32>,
    pub interval_secs: Option<u64>,
}

/// Where a project's tree comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoType {
    #[default]
    Git,
    /// Subversion: refs are `trunk`, `branches/X`, `tags/Y`, or a revision `rNNN` (of the
    /// default ref's path), optionally `PATH@rNNN`.
    Svn,
}

/// How a delta deploy puts unchanged files into the new release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReuseMode {
    /// Copy (a reflink where the filesystem can): releases never share a writable file.
    #[default]
    Copy,
    /// Hard-link; every file of the project's releases is then read-only and agent-owned.
    Hardlink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Parallel,
    Serial,
    Batch,
}

/// `batch = 2` (hosts) or `batch = "25%"` (of the selected hosts, rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BatchRepr", into = "BatchRepr")]
pub enum BatchSize {
    Hosts(u32),
    Percent(u32),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum BatchRepr {
    Int(i64),
    Text(String),
}

impl TryFrom<BatchRepr> for BatchSize {
    type Error = String;
    fn try_from(value: BatchRepr) -> std::result::Result<Self, String> {
        let bad = || "batch must be a host count like 2 or a percentage like \"25%\"".to_string();
        match value {
            BatchRepr::Int(n) if n >= 1 => u32::try_from(n).map(BatchSize::Hosts).map_err(|_| bad()),
            BatchRepr::Int(_) => Err(bad()),
            BatchRepr::Text(s) => {
                let (digits, percent) = match s.strip_suffix('%') {
                    Some(d) => (d, true),
                    None => (s.as_str(), false),
                };
                let n: u32 = digits.trim().parse().map_err(|_| bad())?;
                match (percent, n) {
                    (true, 1..=100) => Ok(BatchSize::Percent(n)),
                    (false, 1..) => Ok(BatchSize::Hosts(n)),
                    _ => Err(bad()),
                }
            }
        }
    }
}

impl From<BatchSize> for BatchRepr {
    fn from(value: BatchSize) -> Self {
        match value {
            BatchSize::Hosts(n) => BatchRepr::Int(i64::from(n)),
            BatchSize::Percent(p) => BatchRepr::Text(format!("{p}%")),
        }
    }
}

/// How to pick hosts: a registered name, or every agent with a label `key=value`. Shown (and
/// serialised) as it is written: `web-1`, `role=web`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum HostSelector {
    Name(String),
    Label { key: String, value: String },
}

impl HostSelector {
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => {
                Ok(HostSelector::Label { key: k.trim().to_owned(), value: v.trim().to_owned() })
            }
            Some(_) => Err(format!("'{text}' is not a label selector; write key=value")),
            None => validate_agent_name(text).map(|()| HostSelector::Name(text.to_owned())).map_err(|e| e.to_string()),
        }
    }
}

impl std::fmt::Display for HostSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostSelector::Name(name) => f.write_str(name),
            HostSelector::Label { key, value } => write!(f, "{key}={value}"),
        }
    }
}

impl From<HostSelector> for String {
    fn from(value: HostSelector) -> String {
        value.to_string()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildSettings {
    pub pre_deploy: Vec<String>,
    pub post_deploy: Vec<String>,
    pub timeout_secs: u64,
    /// Kept between builds (checked: relative, or `~/` and relative, never `..`).
    pub cache: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetSettings {
    pub user: Option<String>,
    /// May contain `{host}`; see [`TargetSettings::deploy_to_for`].
    pub deploy_to: String,
    pub current: Option<String>,
    pub shared: Vec<String>,
    pub pre_release: Vec<String>,
    pub post_release: Vec<String>,
    pub hook_timeout_secs: u64,
    /// The hooks a rollback runs, with the lines recorded with the release it restores.
    pub rollback_hooks: Vec<HookStage>,
    /// Run once per deploy, on one host, before any flip (never by a rollback).
    pub migrate: Vec<String>,
    /// Where `migrate` runs; the first host of the first batch when unset.
    pub migrate_host: Option<String>,
    /// Put the maintenance page up on every host before `migrate`, down when the deploy ends.
    pub maintenance_during_migrate: bool,
    pub maintenance_message: String,
}

impl TargetSettings {
    pub fn deploy_to_for(&self, host: &str) -> PathBuf {
        PathBuf::from(self.deploy_to.replace("{host}", host))
    }

    /// The `current` symlink; `<deploy_to>/current` unless set.
    pub fn current_for(&self, host: &str) -> PathBuf {
        match &self.current {
            Some(c) => PathBuf::from(c.replace("{host}", host)),
            None => self.deploy_to_for(host).join("current"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HealthCheck {
    Http { url: String, expect_status: u16, timeout_secs: u64, retries: u32, interval_secs: u64 },
    Command { command: String, timeout_secs: u64, retries: u32, interval_secs: u64 },
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutSettings {
    pub strategy: Strategy,
    pub batch: BatchSize,
    pub delay_secs: u64,
    pub max_failures: u32,
    pub auto_rollback: bool,
    pub health: Option<HealthCheck>,
    pub host_timeout_secs: u64,
    pub stage_timeout_secs: u64,
    pub drain: Option<DrainSettings>,
    pub canary_pause: bool,
    pub canary_keep_drained: bool,
    pub canary_pause_timeout_secs: u64,
}

/// Everything one environment of a project resolves to, validated.
#[derive(Debug, Clone, Serialize)]
pub struct EnvSettings {
    pub project: String,
    pub env: String,
    pub repo: String,
    pub repo_type: RepoType,
    pub default_ref: String,
    pub keep_releases: u32,
    pub exclude: Vec<String>,
    pub vars: BTreeMap<String, String>,
    pub build: BuildSettings,
    pub target: TargetSettings,
    pub rollout: RolloutSettings,
    pub hosts: Vec<HostSelector>,
    pub canary: Vec<String>,
    pub config_dir: Option<String>,
    /// Only builds that ran in this env first (`--from ENV`, a deploy or an artifact that did).
    pub promote_from: Option<String>,
    /// When deploys may start (empty: always); rollbacks are never held.
    pub windows: Vec<windows::Window>,
    pub reuse: ReuseMode,
    pub approval: server::Approval,
    pub catch_up: bool,
}

/// A parsed, validated project file. Every env is resolved at parse time so that a bad value
/// anywhere is reported by `project apply`, not at deploy time.
#[derive(Debug, Clone)]
pub struct ProjectConfig {
    pub file: ProjectFile,
    pub envs: BTreeMap<String, EnvSettings>,
}

impl ProjectConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read project file", path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<Self> {
        let parsed: ProjectFile = toml::from_str(text).map_err(|e| Error::config(file, toml_message(&e)))?;
        validate_name("project name", &parsed.name).map_err(|e| Error::config(file, format!("name: {e}")))?;
        if parsed.env.is_empty() {
            return Err(Error::config(
                file,
                "no environments: add at least one table like [env.prod] with hosts = [...]",
            ));
        }
        let mut envs = BTreeMap::new();
        for (env_name, env) in &parsed.env {
            validate_name("env name", env_name).map_err(|e| Error::config(file, format!("env.{env_name}: {e}")))?;
            let settings = resolve_env(&parsed, env_name, env)
                .map_err(|why| Error::config(file, format!("env '{env_name}': {why}")))?;
            envs.insert(env_name.clone(), settings);
        }
        let names: Vec<&str> = parsed.env.keys().map(String::as_str).collect();
        for (env_name, settings) in &envs {
            if let Some(from) = &settings.promote_from
                && (from == env_name || !names.contains(&from.as_str()))
            {
                return Err(Error::config(
                    file,
                    format!(
                        "env '{env_name}': promote_from = \"{from}\" must name another env of the project (it has: {})",
                        names.join(", ")
                    ),
                ));
            }
        }
        for rule in &parsed.webhook {
            rule.validate(&names).map_err(|why| Error::config(file, why))?;
        }
        for sink in &parsed.notify {
            sink.validate().map_err(|why| Error::config(file, why))?;
        }
        Ok(ProjectConfig { file: parsed, envs })
    }

    pub fn name(&self) -> &str {
        &self.file.name
    }

    /// The env's settings, or `None` when the project has no such env.
    pub fn env(&self, name: &str) -> Option<&EnvSettings> {
        self.envs.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = r#"
name = "web-demo"
repo = "/srv/git/web-demo.git"
keep_releases = 3
vars = { APP_ENV = "production" }

[target]
deploy_to = "/data/release/{host}/web-demo"

[rollout]
batch = "50%"

[env.prod]
hosts = ["web-1", "role=web"]
keep_releases = 7
target = { current = "/data/nginx/{host}/website" }

[env.test]
hosts = ["web-1"]
"#;

    #[test]
    fn env_overrides_and_defaults() {
        let p = ProjectConfig::parse(DEMO, "demo.toml").unwrap();
        let prod = p.env("prod").unwrap();
        assert_eq!(prod.keep_releases, 7);
        assert_eq!(prod.default_ref, "main");
        assert_eq!(prod.target.deploy_to_for("web-1"), PathBuf::from("/data/release/web-1/web-demo"));
        assert_eq!(prod.target.current_for("web-1"), PathBuf::from("/data/nginx/web-1/website"));
        assert_eq!(prod.hosts[1], HostSelector::Label { key: "role".into(), value: "web".into() });
        assert_eq!(prod.rollout.batch, BatchSize::Percent(50));
        let test = p.env("test").unwrap();
        assert_eq!(test.keep_releases, 3);
        assert_eq!(test.target.current_for("web-1"), PathBuf::from("/data/release/web-1/web-demo/current"));
    }

    fn check_err(text: &str, expected: &[&str]) {
        let err = ProjectConfig::parse(text, "p.toml").unwrap_err().to_string();
        for e in expected {
            assert!(err.contains(e), "error {err:?} should contain {e:?}");
        }
    }

    #[test]
    fn bad_project_files_name_file_and_key() {
        let base = "name = \"x\"\nrepo = \"/r\"\n[target]\ndeploy_to = \"/d\"\n";
        check_err(&format!("{base}colour = 1\n[env.a]\nhosts=[\"h\"]\n"), &["p.toml", "colour"]);
        check_err(&format!("{base}[env.a]\nhosts=[\"h\"]\nbogus = 2\n"), &["p.toml", "bogus"]);
        check_err(&format!("{base}keep_releases = 0\n[env.a]\nhosts=[\"h\"]\n"), &["p.toml", "keep_releases"]);
        check_err(
            "name = \"x\"\nrepo = \"/r\"\n[target]\ndeploy_to = \"rel\"\n[env.a]\n",
            &["target.deploy_to", "absolute"],
        );
        check_err("name = \"x\"\nrepo = \"/r\"\n[target]\ndeploy_to = \"/a/../b\"\n[env.a]\n", &["target.deploy_to"]);
        check_err(&format!("{base}[rollout]\nstrategy = \"yolo\"\n[env.a]\n"), &["p.toml", "yolo"]);
        check_err(&format!("{base}[rollout]\nbatch = \"0%\"\n[env.a]\n"), &["batch"]);
        check_err(&format!("{base}[env.a]\nhosts = [\"Bad_Name\"]\n"), &["hosts", "Bad_Name"]);
        check_err(base, &["no environments"]);
        check_err("name = \"Web Demo\"\nrepo=\"/r\"\n[env.a]\n", &["name", "Web Demo"]);
        check_err(&format!("{base}[target2]\n[env.a]\n"), &["target2"]);
        check_err("name = \"x\"\n[target]\ndeploy_to = \"/d\"\n[env.a]\n", &["repo is missing"]);
        check_err(
            "name = \"x\"\nrepo = \"/r\"\n[target]\ndeploy_to = \"/d\"\nrollback_hooks = [\"restart\"]\n[env.a]\n",
            &["p.toml", "restart", "pre_release", "post_release"],
        );
    }

    #[test]
    fn drain_settings_resolve_or_name_the_key() {
        let base = "name = \"x\"\nrepo = \"/r\"\n[target]\ndeploy_to = \"/d\"\n[env.a]\n";
        let c = ProjectConfig::parse(
            &format!(
                "{base}[rollout.drain]\nhaproxy = {{ socket = \"/run/haproxy/admin.sock\", backend = \"web\" }}\n"
            ),
            "p",
        )
        .unwrap();
        let d = c.envs["a"].rollout.drain.clone().unwrap();
        assert_eq!((d.timeout_secs, d.allow_full_drain), (30, false));
        assert_eq!(d.server_for("web-1").as_deref(), Some("web-1"));
        let bad = |drain: &str, needle: &str| check_err(&format!("{base}[rollout.drain]\n{drain}"), &[needle]);
        bad("haproxy = { socket = \"/s\" }\n", "backend");
        bad("haproxy = { socket = \"rel.sock\", backend = \"b\" }\n", "absolute");
        bad("haproxy = { addr = \"nohost\", backend = \"b\" }\n", "HOST:PORT");
        bad("haproxy = { socket = \"/s\", backend = \"b\" }\ndrain = [\"x\"]\n", "not both");
        bad("drain = [\"lb-out\"]\n", "undrain");
        bad("drain = [\"a\"]\nundrain = [\"b\"]\nrun_on = \"Bad_Name\"\n", "run_on");
        bad("haproxy = { socket = \"/s\", backend = \"b\" }\nrun_on = \"host\"\n", "run_on");
        check_err(&format!("{base}[rollout]\ncanary_pause = true\n"), &["canary_pause", "canary ="]);
        check_err(&format!("{base}[rollout]\ncanary_keep_drained = true\n"), &["canary_keep_drained", "drain"]);
    }

    #[test]
    fn rollback_hooks_default_to_post_release() {
        let base = "name = \"x\"\nrepo = \"/r\"\n[target]\ndeploy_to = \"/d\"\n";
        let c = ProjectConfig::parse(&format!("{base}[env.a]\n[env.b.target]\nrollback_hooks = []\n"), "p").unwrap();
        assert_eq!(c.envs["a"].target.rollback_hooks, [HookStage::PostRelease]);
        assert!(c.envs["b"].target.rollback_hooks.is_empty());
    }

    #[test]
    fn agent_config_resolves_relative_paths() {
        let text = "name = \"web-1\"\nlisten = \"127.0.0.1:7443\"\nstate_dir = \"state\"\nallowed_roots = [\"/data\"]\n[tls]\nca = \"ca.pem\"\ncert = \"/etc/a.pem\"\nkey = \"a.key\"\n";
        let c = AgentConfig::parse(text, "agent.toml", Path::new("/etc/slipway")).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/etc/slipway/state"));
        assert_eq!(c.tls.ca, PathBuf::from("/etc/slipway/ca.pem"));
        assert_eq!(c.tls.cert, PathBuf::from("/etc/a.pem"));
        assert!(c.is_allowed(Path::new("/data/x")));
        assert!(!c.is_allowed(Path::new("/data")));
        assert!(!c.is_allowed(Path::new("/database/x")));
        let bad = text.replace("127.0.0.1:7443", "localhost");
        let err = AgentConfig::parse(&bad, "agent.toml", Path::new("/")).unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
        let bad = text.replace("[\"/data\"]", "[\"/\"]");
        assert!(AgentConfig::parse(&bad, "agent.toml", Path::new("/")).is_err());
    }
}
