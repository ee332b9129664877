//! English and Simplified Chinese for the pages: the `lang` cookie (the switch) wins, then
//! `Accept-Language` (any `zh` tag reads Chinese), then English.

use axum::http::{HeaderMap, header};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    pub fn of(headers: &HeaderMap) -> Lang {
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == "lang")
            .map(|(_, v)| v.to_owned());
        match cookie.as_deref() {
            Some("zh") => return Lang::Zh,
            Some("en") => return Lang::En,
            _ => {}
        }
        let accept = headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).unwrap_or("");
        // The first language listed decides (browsers put the preferred one first).
        match accept.split(',').next().map(|l| l.trim().to_ascii_lowercase()) {
            Some(l) if l.starts_with("zh") => Lang::Zh,
            _ => Lang::En,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    /// The label `key` in this language.
    pub fn t(self, key: &str) -> &'static str {
        let (en, zh) = match key {
            "title" => ("Slipway", "Slipway 发布"),
            "dashboard" => ("Dashboard", "总览"),
            "login" => ("Log in", "登录"),
            "logout" => ("Log out", "退出"),
            "user" => ("User", "用户名"),
            "password" => ("Password", "密码"),
            "wrong" => ("Wrong user or password.", "用户名或密码错误。"),
            "sso" => ("Sign in with your", "使用公司账号登录:"),
            "project" => ("Project", "项目"),
            "release" => ("Release on the hosts", "主机上的版本"),
            "last_deploy" => ("Last deploy", "最近上线"),
            "last_ticket" => ("Last ticket", "最近上线单"),
            "running" => ("Deploying", "正在上线"),
            "no_hosts" => ("nothing deployed yet", "尚未上线"),
            "no_projects" => ("No project you may see yet.", "还没有您可以查看的项目。"),
            "hosts_on" => ("on", "台在"),
            "switch" => ("中文", "English"),
            "signed_in" => ("Signed in as", "当前用户"),
            "succeeded" => ("succeeded", "成功"),
            "failed" => ("failed", "失败"),
            "rolled_back" => ("rolled back", "已回滚"),
            "cancelled" => ("cancelled", "已取消"),
            "interrupted" => ("interrupted", "已中断"),
            "incomplete" => ("incomplete", "未完成"),
            "paused" => ("paused", "已暂停"),
            "planned" => ("planned", "计划"),
            "pending" => ("pending approval", "待审核"),
            "approved" => ("approved", "已审核"),
            "rejected" => ("rejected", "已驳回"),
            "deploying" => ("deploying", "上线中"),
            "nav" => ("Main", "主导航"),
            "skip" => ("Skip to the content", "跳到正文"),
            "history" => ("History", "上线记录"),
            "agents" => ("Agents", "主机"),
            "users" => ("Users", "用户"),
            "account" => ("Your account", "我的账号"),
            "change_password" => ("Change the password", "修改密码"),
            "current_password" => ("Current password", "当前密码"),
            "new_password" => ("New password (8 characters or more)", "新密码（至少 8 个字符）"),
            "password_changed" => ("Password changed; your other sessions ended.", "密码已修改，其他会话已退出。"),
            "reset_password" => ("New password", "重置密码"),
            "password_reset" => ("New password for", "已重置密码："),
            "problem" => ("That did not work", "操作未完成"),
            "fix" => ("What to do:", "解决办法："),
            "back" => ("Back", "返回"),
            "env" => ("Environment", "环境"),
            "ref" => ("Ref", "版本"),
            "build" => ("Build", "构建"),
            "maintenance_on" => ("Maintenance on", "开启维护页"),
            "maintenance_off" => ("Maintenance off", "关闭维护页"),
            "maintenance_message" => ("Maintenance message", "维护提示"),
            "overridden" => ("Overridden", "强制上线"),
            "starts" => ("Starts", "开始"),
            "freezes" => ("Freezes", "封网"),
            "windows" => ("Deploy windows", "上线窗口"),
            "freeze_env" => ("Freeze", "封网"),
            "lift" => ("Lift", "解除"),
            "until" => ("Until", "截止"),
            "reason" => ("Reason", "原因"),
            "frozen_by" => ("by", "设置人"),
            "env_layer" => ("Env layer (config_dir)", "环境配置层 (config_dir)"),
            "promote_pick" => ("The build to promote", "要提升的构建"),
            "promote_button" => ("New ticket: promote the build of", "新建上线单：提升构建自"),
            "promote_from" => ("Or promote the build another env runs", "或提升其他环境正在运行的构建"),
            "promote_only" => {
                ("This env takes only builds that ran first in", "此环境只接受先在以下环境运行过的构建：")
            }
            "build_the_ref" => ("— build the ref above —", "— 构建上面选的版本 —"),
            "nothing_to_promote" => {
                ("Nothing to promote yet: no deploy succeeded in", "暂无可提升的构建：以下环境还没有成功上线：")
            }
            "requester" => ("Requested by", "申请人"),
            "rolls_back" => ("Takes back", "回滚的上线单"),
            "restores" => ("Restores", "回滚到"),
            "project_settings" => ("Project settings", "项目配置"),
            "new_project" => ("New project", "新建项目"),
            "edit_project" => ("Settings", "项目配置"),
            "revision" => ("revision", "版本号"),
            "read_only" => (
                "You may read these settings; a maintainer of the project changes them.",
                "你可以查看这些配置；项目维护者才能修改。",
            ),
            "group_project" => ("Project", "项目"),
            "group_build" => ("Build, on the controller (宿主机)", "构建（宿主机）"),
            "group_target" => ("Targets, on each host (目标机器)", "目标机器"),
            "group_rollout" => ("Rollout", "发布方式"),
            "group_env" => ("Environment", "环境"),
            "group_more" => ("Everything else", "其他配置"),
            "new_env" => ("Add an environment", "添加环境"),
            "f_name" => ("Project name", "项目名称"),
            "f_env_name" => ("Name of the new environment", "新环境名称"),
            "f_repo" => ("Repository", "仓库地址"),
            "f_default_ref" => ("Default branch, tag or commit", "默认版本"),
            "f_exclude" => ("Excluded files, one pattern a line", "排除文件（每行一个）"),
            "f_keep_releases" => ("Releases kept on each host", "保留版本数"),
            "f_build_pre_deploy" => ("Before the build, one command a line", "代码检出后（每行一条命令）"),
            "f_build_post_deploy" => ("The build, one command a line", "构建（每行一条命令）"),
            "f_target_user" => ("User the hooks run as", "目标机器用户"),
            "f_target_deploy_to" => ("Release library (deploy_to)", "代码仓库（版本库）"),
            "f_target_current" => ("Webroot (the current symlink)", "webroot（current 软链）"),
            "f_target_shared" => ("Shared paths kept across releases, one a line", "共享目录（每行一个）"),
            "f_target_pre_release" => ("Before the switch, one command a line", "上线前（每行一条命令）"),
            "f_target_post_release" => ("After the switch (the restart), one command a line", "上线后（每行一条命令）"),
            "f_target_hook_timeout_secs" => ("Hook timeout (s)", "命令超时（秒）"),
            "f_rollout_strategy" => ("Strategy", "发布方式"),
            "f_rollout_batch" => ("Batch (hosts, or a percentage)", "每批数量"),
            "f_rollout_delay_secs" => ("Wait between batches (post_release_delay, s)", "批次间隔（秒）"),
            "f_rollout_max_failures" => ("Hosts that may fail", "允许失败的主机数"),
            "f_rollout_auto_rollback" => ("Roll back by itself when it fails", "失败时自动回滚"),
            "f_rollout_canary_pause" => ("Pause after the canary", "灰度后暂停"),
            "f_hosts" => ("Registered hosts", "已注册主机"),
            "f_selectors" => (
                "Other hosts: label selectors (key=value) or names, one a line",
                "其他主机：标签选择（key=value）或名称，每行一个",
            ),
            "matches_now" => ("Matches now", "当前匹配"),
            "f_approval" => ("Approvals each ticket needs", "上线单需审核人数"),
            "f_canary" => ("Canary hosts, one a line", "灰度主机（每行一个）"),
            "f_advanced" => (
                "Webhooks, notifications, drain, health and per-env overrides (TOML; secrets stay as ******** to keep them)",
                "Webhook、通知、摘除、健康检查和环境覆盖（TOML；密钥保留 ******** 即不变）",
            ),
            "preview" => ("Preview the change", "预览修改"),
            "save" => ("Save", "保存"),
            "save_check" => ("Save and check", "保存并检测"),
            "saved_as" => ("Saved as revision", "已保存为版本"),
            "revisions" => ("Revisions", "修改记录"),
            "what_changed" => ("what changed", "查看修改"),
            "revert_to" => ("Revert to this", "恢复到此版本"),
            "their_previous" => ("each host's previous release", "各主机的上一个版本"),
            "roll_back_ticket" => ("Roll back ticket", "回滚上线单"),
            "will_touch" => ("Hosts it deploys to", "将上线的主机"),
            "ticket_no" => ("Ticket #", "上线单 #"),
            "deploy_no" => ("Deploy #", "部署 #"),
            "parallel" => ("parallel", "并行"),
            "serial" => ("serial (one host after another)", "串行（逐台）"),
            "batch" => ("in batches", "分批"),
            "why_rollback_target" => ("rollback target", "回滚目标"),
            "why_beyond_keep" => {
                ("beyond keep_releases: removed at the next deploy", "超出保留数量（keep_releases），下次部署时删除")
            }
            "why_rolled_back" => {
                ("rolled back from: removed at the next deploy", "已回滚，不计入保留数量，下次部署时删除")
            }
            "why_never_activated" => ("never activated: removed at the next deploy", "从未上线，下次部署时删除"),
            "approvals" => ("Approvals", "审核"),
            "comment" => ("Comment", "意见"),
            "approve" => ("Approve", "审核通过"),
            "reject" => ("Reject", "驳回"),
            "deploy" => ("Deploy", "上线"),
            "cancel" => ("Cancel", "取消"),
            "rollback" => ("Roll back", "回滚"),
            "timeline" => ("Timeline", "流转记录"),
            "ticket" => ("Ticket", "上线单"),
            "tickets" => ("Tickets", "上线单"),
            "earlier" => ("Earlier deploys", "之前的上线"),
            "new_ticket" => ("New ticket", "创建上线单"),
            "title_field" => ("Title", "标题"),
            "description" => ("Description", "描述"),
            "ref_pick" => ("Branch, tag or commit", "分支、标签或提交"),
            "resolves" => ("Resolves to", "对应提交"),
            "needs_approval" => ("Approvals this env needs:", "此环境需要的审核数："),
            "create" => ("Create ticket", "提交上线单"),
            "branches" => ("Branches", "分支"),
            "tags" => ("Tags (last 10)", "标签（最近 10 个）"),
            "commits" => ("Commits (last 50)", "提交（最近 50 个）"),
            "status" => ("Status", "状态"),
            "kind" => ("Kind", "类型"),
            "who" => ("Who", "操作人"),
            "started" => ("Started", "开始时间"),
            "took" => ("Took", "耗时"),
            "controller" => ("Controller", "控制端"),
            "outcome" => ("Outcome", "结果"),
            "waiting" => ("waiting", "等待中"),
            "connecting" => ("connecting", "连接中"),
            "uploading" => ("uploading", "上传中"),
            "unpacking" => ("unpacking", "解包中"),
            "staged" => ("staged", "已就绪"),
            "activating" => ("switching current", "切换 current"),
            "activated" => ("live", "已上线"),
            "live" => ("live", "已上线"),
            "was" => ("was", "之前为"),
            "aborted" => ("aborted", "已中止"),
            "drained" => ("out of the load balancer", "已摘出负载均衡"),
            "undrained" => ("back in the load balancer", "已加回负载均衡"),
            "hook" => ("hook", "钩子"),
            "exit" => ("exit", "退出码"),
            "timed_out" => ("timed out", "超时"),
            "default_ref" => ("Default ref", "默认版本"),
            "strategy" => ("Rollout", "发布方式"),
            "keep" => ("Releases kept", "保留版本数"),
            "check" => ("Check", "检测"),
            "check_item" => ("Item", "检测项"),
            "result" => ("Result", "结果"),
            "detail" => ("Detail", "详情"),
            "fix_col" => ("Fix", "解决办法"),
            "in_progress" => ("in progress", "进行中"),
            "remove" => ("Remove", "删除"),
            "add_user" => ("Add user", "添加用户"),
            "added" => ("Added", "已添加"),
            "password_once" => ("Their password, shown this once:", "初始密码（仅显示这一次）："),
            "not_required" => ("none required", "无需审核"),
            "paused_canary" => ("The canary is live; the other hosts wait.", "灰度主机已上线，其余主机等待中。"),
            "promote" => ("Promote to all hosts", "继续全量上线"),
            "abort" => ("Abort, take the canary back", "中止并回退灰度主机"),
            "hooks" => ("running hooks", "执行钩子"),
            "passed" => ("passed", "通过"),
            "ok" => ("ok", "正常"),
            "hosts" => ("Hosts", "主机"),
            "host" => ("Host", "主机"),
            "reachable" => ("reachable", "在线"),
            "unreachable" => ("unreachable", "离线"),
            "not_probed" => ("not probed yet", "尚未探测"),
            "version" => ("Agent version", "Agent 版本"),
            "cert_days" => ("Certificate days left", "证书剩余天数"),
            "current" => ("Current release", "当前版本"),
            "retained" => ("Retained releases", "保留的版本"),
            "rollback_to" => ("Roll back to", "回滚到"),
            "previous" => ("each host's previous release", "各主机的上一个版本"),
            "recent" => ("Recent deploys", "最近上线"),
            "confirm_changes" => ("These hosts change:", "以下主机将改变："),
            "confirm_rollback" => ("Yes, roll back", "确认回滚"),
            "any" => ("any", "全部"),
            "filter" => ("Filter", "筛选"),
            "no_history" => ("Nothing matches.", "没有符合条件的记录。"),
            "address" => ("Address", "地址"),
            "checked" => ("Probed", "探测时间"),
            "admin" => ("Admin", "管理员"),
            "yes" => ("yes", "是"),
            "grants" => ("Grants", "权限"),
            "grant" => ("Grant", "授权"),
            "revoke" => ("Revoke", "收回"),
            "role" => ("Role", "角色"),
            "viewer" => ("viewer", "查看者"),
            "deployer" => ("deployer", "上线者"),
            "approver" => ("approver", "审核者"),
            "maintainer" => ("maintainer", "维护者"),
            "add_host" => ("Add a host", "添加主机"),
            "add_host_help" => (
                "A one-time token for one host: run the command it gives on the host, as root, then start slipd.",
                "为一台主机生成一次性令牌：在该主机上以 root 运行给出的命令，然后启动 slipd。",
            ),
            "make_join_token" => ("Make a join token", "生成加入令牌"),
            "join_token_made" => ("Join token made for", "已生成加入令牌："),
            "expires" => ("expires", "过期于"),
            "run_on_host" => ("Run on the host (shown once):", "在该主机上运行（仅显示一次）："),
            "no_join_listen" => (
                "This server has no agents' endpoint: start it with --join-listen, and put its URL in the command.",
                "此服务没有主机加入端点：请用 --join-listen 启动，并把其地址填入命令。",
            ),
            "labels" => ("Labels", "标签"),
            "valid_for" => ("Valid for", "有效期"),
            "evict" => ("Evict", "驱逐"),
            "all_envs" => ("* (every env)", "*（所有环境）"),
            _ => ("?", "?"),
        };
        match self {
            Lang::En => en,
            Lang::Zh => zh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_cookie_then_the_first_accepted_language_decides() {
        assert_eq!(Lang::of(&headers(&[(header::ACCEPT_LANGUAGE, "zh-CN,zh;q=0.9,en;q=0.8")])), Lang::Zh);
        assert_eq!(Lang::of(&headers(&[(header::ACCEPT_LANGUAGE, "en-US,zh;q=0.5")])), Lang::En);
        assert_eq!(Lang::of(&headers(&[])), Lang::En);
        let both = headers(&[(header::ACCEPT_LANGUAGE, "zh-CN"), (header::COOKIE, "a=1; lang=en")]);
        assert_eq!(Lang::of(&both), Lang::En, "the switch wins");
        assert_eq!(Lang::Zh.t("login"), "登录");
    }

    #[test]
    fn every_label_the_pages_use_is_translated() {
        let sources = [
            include_str!("mod.rs"),
            include_str!("dashboard.rs"),
            include_str!("ticket.rs"),
            include_str!("panes.rs"),
            include_str!("project.rs"),
            include_str!("lists.rs"),
            include_str!("form.rs"),
        ];
        let mut missing = Vec::new();
        for src in sources {
            for (i, _) in src.match_indices(".t(\"") {
                let rest = &src[i + 4..];
                let key = &rest[..rest.find('"').unwrap()];
                if Lang::En.t(key) == "?" || Lang::Zh.t(key) == "?" {
                    missing.push(key.to_owned());
                }
            }
        }
        assert!(missing.is_empty(), "labels without a translation: {missing:?}");
    }
}
