//! A deploy's step that runs once (`[target] migrate`): the lines run on this one host, in the
//! staged release the deploy just put here (not yet `current`), as the target's hook user with
//! the release's SLIPWAY_* variables, under the target's lock and fenced by the generation like
//! every other change.

use std::time::Duration;

use slipway_common::ReleaseId;
use slipway_proto::pb;

use super::*;
use crate::error::AgentError;
use crate::hooks::{failure, run_hook};
use crate::layout::Open;

impl Inner {
    pub(super) async fn migrate(&self, req: pb::RunCommandsRequest) -> Result<pb::RunCommandsReply, AgentError> {
        let ctx = req.hook_context.clone().unwrap_or_default();
        crate::hooks::check_vars(&ctx.vars)?;
        let target = blocking(|| self.target(req.target.clone(), Open::Existing))?;
        let id = ReleaseId::parse(&req.release_id).map_err(bad)?;
        let run_as = self.run_as(&ctx.user, true).await?.ok_or_else(|| bad("migrate needs a hook user"))?;
        let _guard = self.lock(&target.key).await;
        let mut record = self.record(&target)?;
        self.check_generation(&mut record, req.generation)?;
        let layout = &target.layout;
        held_release(layout, &id)?;
        let previous = layout.read_current()?.release().map(ToString::to_string).unwrap_or_default();
        let release_path = layout.release_path(&id);
        let site = HookSite {
            target: &target,
            ctx: &ctx,
            run_as: &run_as,
            release: &id,
            release_path: &release_path,
            previous,
            deploy_type: "deploy",
            deploy_id: req.deploy_id,
            commit: ctx.commit.clone(),
        };
        let env = self.hook_env(&site);
        let spec = req.spec.unwrap_or_default();
        let timeout = Duration::from_secs(spec.timeout_secs.max(1));
        let mut results = Vec::new();
        for command in &spec.commands {
            let result = run_hook("migrate", command, &release_path, &env, &run_as, timeout, None).await;
            let failed = failure(&result, timeout);
            results.push(result);
            if let Some(why) = failed {
                return Ok(pb::RunCommandsReply { results, error: why });
            }
        }
        Ok(pb::RunCommandsReply { results, error: String::new() })
    }
}
