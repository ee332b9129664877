//! Maintenance mode (`slipctl maintenance on|off`): the agent writes `<deploy_to>/maintenance.html`
//! — in the target's own directory, which the app user cannot write, so the app can neither
//! remove the page nor put one up — in one rename, or removes it. The web server serves it
//! instead of the app while it exists (README: the nginx and HAProxy snippets).

use slipway_proto::pb;

use super::*;
use crate::error::AgentError;
use crate::layout::Open;

/// The page's file name in `deploy_to`.
pub const PAGE: &str = "maintenance.html";

/// The page: the message, escaped.
fn page(message: &str) -> String {
    let escaped: String = message
        .chars()
        .take(2000)
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect();
    let text = if escaped.is_empty() { "Down for maintenance. Back soon.".to_owned() } else { escaped };
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Maintenance</title></head>\n<body><h1>Maintenance</h1><p>{text}</p></body></html>\n"
    )
}

impl Inner {
    pub(super) async fn maintenance(&self, req: pb::MaintenanceRequest) -> Result<pb::MaintenanceReply, AgentError> {
        let target = blocking(|| self.target(req.target.clone(), Open::Existing))?;
        let _guard = self.lock(&target.key).await;
        let dir = target.layout.deploy_dir()?;
        let path = dir.display(PAGE);
        let was_on = dir.stat(PAGE).map_err(|e| AgentError::io("cannot inspect", &path, e))?.is_some();
        if req.on {
            blocking(|| {
                dir.replace_file(PAGE, page(&req.message).as_bytes(), 0o644)
                    .map_err(|e| AgentError::io("cannot write", &path, e))
            })?;
            return Ok(pb::MaintenanceReply { path: path.display().to_string(), was_on });
        }
        if was_on {
            dir.unlink(PAGE).map_err(|e| AgentError::io("cannot remove", &path, e))?;
        }
        Ok(pb::MaintenanceReply { path: String::new(), was_on })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_message_is_escaped() {
        let p = super::page("<script>alert('x')</script> & \"back\"");
        assert!(p.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;back&quot;"));
        assert!(super::page("").contains("Back soon"));
    }
}
