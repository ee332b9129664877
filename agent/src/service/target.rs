//! The path policy of a request's target: names checked, paths clean and under an allowed
//! root, clear of the agent's own files and of every other target, and the directories opened
//! beneath the root (see `layout`).

use std::path::{Path, PathBuf};

use slipway_common::config::check_clean_absolute;
use slipway_common::names::validate_name;
use slipway_proto::pb;

use super::*;
use crate::error::AgentError;
use crate::kept::KeptManifests;
use crate::layout::{Layout, Open};
use crate::state::TargetRecord;

/// One project+env as a request names it, checked, with its directories held open.
pub(super) struct Target {
    pub(super) key: String,
    pub(super) project: String,
    pub(super) env: String,
    pub(super) layout: Layout,
    pub(super) kept: KeptManifests,
}

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

impl Inner {
    /// Check a request's target and open its directories (creating them when `create`).
    pub(super) fn target(&self, target: Option<pb::Target>, open: Open) -> Result<Target, AgentError> {
        let t = target.ok_or_else(|| bad("request has no target"))?;
        validate_name("project name", &t.project).map_err(bad)?;
        validate_name("env name", &t.env).map_err(bad)?;
        let deploy_to = PathBuf::from(&t.deploy_to);
        let current = PathBuf::from(&t.current);
        let key = TargetRecord::key(&t.project, &t.env);
        self.check_paths(&key, &deploy_to, &current, open == Open::Stage)?;
        let layout = Layout::open(&self.config.allowed_roots, &deploy_to, &current, open)?;
        Ok(Target {
            kept: KeptManifests::new(&self.config.state_dir, &t.project, &t.env),
            key,
            project: t.project,
            env: t.env,
            layout,
        })
    }

    /// Lexical checks of a target's paths: clean, absolute, under an allowed root, and clear of
    /// the agent's own files and of every other target.
    pub(super) fn check_paths(
        &self,
        key: &str,
        deploy_to: &Path,
        current: &Path,
        creating: bool,
    ) -> Result<(), AgentError> {
        let roots = || self.config.allowed_roots.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        for (what, path) in [("deploy_to", deploy_to), ("current", current)] {
            if path.as_os_str().len() > 4096 {
                return Err(bad(format!("{what} is longer than 4096 bytes")));
            }
            check_clean_absolute(path).map_err(|why| bad(format!("{what}: {why}")))?;
            if !self.config.is_allowed(path) {
                return Err(AgentError::NotAllowed(format!(
                    "{what} {} is outside this agent's allowed_roots ({}); add a root to agent.toml or change the project",
                    path.display(),
                    roots()
                )));
            }
        }
        if current.starts_with(deploy_to.join("releases")) {
            return Err(bad("current must not be inside <deploy_to>/releases"));
        }
        let own = [
            ("state_dir", &self.config.state_dir),
            ("tls.ca", &self.config.tls.ca),
            ("tls.cert", &self.config.tls.cert),
            ("tls.key", &self.config.tls.key),
        ];
        for (name, path) in own {
            if overlaps(deploy_to, path) || current.starts_with(path) || path.starts_with(current) {
                return Err(AgentError::NotAllowed(format!(
                    "deploy_to {} / current {} overlaps this agent's {name} {}; give the project a directory of its own",
                    deploy_to.display(),
                    current.display(),
                    path.display()
                )));
            }
        }
        // Against every other target only where directories may be created (a stage): the
        // other calls act on what a stage already checked, and need not read every record.
        if !creating {
            return Ok(());
        }
        let (others, _) = self.state.all_lenient();
        for other in others.iter().filter(|o| TargetRecord::key(&o.project, &o.env) != key) {
            if overlaps(deploy_to, &other.deploy_to) || current == other.current {
                return Err(AgentError::NotAllowed(format!(
                    "deploy_to {} / current {} overlaps those of {}/{} ({}, {}); give each project+env its own directories",
                    deploy_to.display(),
                    current.display(),
                    other.project,
                    other.env,
                    other.deploy_to.display(),
                    other.current.display()
                )));
            }
        }
        Ok(())
    }
}
