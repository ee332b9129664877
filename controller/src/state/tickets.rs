//! Deploy tickets (Walle's 上线单): what is asked, who approved it, what it started.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::state::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketKind {
    Deploy,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketState {
    Pending,
    Approved,
    Rejected,
    Deploying,
    Succeeded,
    Failed,
    RolledBack,
    Cancelled,
    /// The server stopped (or died) while the ticket's deploy ran; the deploy's record says
    /// what each host is.
    Interrupted,
}

impl TicketState {
    pub fn word(self) -> &'static str {
        match self {
            TicketState::Pending => "pending",
            TicketState::Approved => "approved",
            TicketState::Rejected => "rejected",
            TicketState::Deploying => "deploying",
            TicketState::Succeeded => "succeeded",
            TicketState::Failed => "failed",
            TicketState::RolledBack => "rolled_back",
            TicketState::Cancelled => "cancelled",
            TicketState::Interrupted => "interrupted",
        }
    }
}

/// Who did something to a ticket, when and from where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    pub by: String,
    pub at: i64,
    pub from: String,
}

/// One change of a ticket's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub state: TicketState,
    #[serde(flatten)]
    pub audit: Audit,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    #[serde(flatten)]
    pub audit: Audit,
    pub comment: String,
    /// Who approved for the four-eyes rule (a token's owner, a declared socket user); records
    /// made before principals existed read their `by`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

impl Approval {
    pub fn principal(&self) -> &str {
        self.principal.as_deref().unwrap_or(&self.audit.by)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketRecord {
    pub id: u64,
    pub kind: TicketKind,
    pub project: String,
    pub env: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// What the ref was when the ticket was made: what it deploys, whatever the ref moves to.
    pub commit: String,
    pub commit_summary: String,
    pub title: String,
    pub description: String,
    pub state: TicketState,
    pub requester: String,
    /// The requester as a principal (see `server::auth::Caller::principal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_principal: Option<String>,
    /// For a webhook's ticket: who pushed, as the signed payload names them
    /// (`github:alice`), and the Slipway user of that name when there is one: neither may
    /// approve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pusher_user: Option<String>,
    pub created: Audit,
    /// Approvals it needs (the env's `approval.required` when it was made).
    pub required: u32,
    pub approvals: Vec<Approval>,
    pub deploys: Vec<u64>,
    /// A rollback ticket: the ticket whose deploy it takes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    /// A rollback ticket: the release it restores (what the hosts ran before the deploy it takes
    /// back), when the hosts agree on one; none: each host's previous release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restores: Option<String>,
    /// A ticket that ships an existing build (a promotion, a pushed artifact): that build, pinned
    /// when the ticket was made, and the deploy it is taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<crate::state::store::BuildInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_deploy: Option<u64>,
    /// An approved ticket that starts its deploy by itself once it may (a webhook's held by a
    /// freeze or a window, or a scheduled one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<AutoStart>,
    pub transitions: Vec<Transition>,
}

/// When an approved ticket starts by itself, and what holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoStart {
    /// Not before this time (a schedule); none: as soon as it may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
    /// Past this it does not start (and is cancelled, saying so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// Who set it up, and the name its deploy runs as.
    pub by: Audit,
    /// What held it when last looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

impl TicketRecord {
    /// The principals who may not approve or reject this ticket: its requester, and for a
    /// webhook's ticket the Slipway user who pushed.
    pub fn interested(&self) -> Vec<&str> {
        let mut out = vec![self.requester_principal.as_deref().unwrap_or(&self.requester)];
        out.extend(self.pusher_user.as_deref());
        out
    }
}

impl Store {
    /// Tickets with an [`AutoStart`] not yet done, by id (a small index the scheduler reads
    /// each second instead of every ticket).
    pub fn starting_tickets(&self) -> Result<Vec<u64>> {
        Ok(self
            .backend()
            .scan("ticket_starts", b"", false)?
            .into_iter()
            .filter_map(|(k, _)| <[u8; 8]>::try_from(k.as_slice()).ok().map(u64::from_be_bytes))
            .collect())
    }
    pub fn mark_starting(&self, id: u64, on: bool) -> Result<()> {
        if on {
            self.backend().put("ticket_starts", &id.to_be_bytes(), b"1")?;
        } else {
            self.backend().remove("ticket_starts", &id.to_be_bytes())?;
        }
        self.flush()
    }

    pub fn next_ticket_id(&self) -> Result<u64> {
        let id = self.backend().increment("next_ticket_id")?;
        self.flush()?;
        Ok(id)
    }
    pub fn ticket(&self, id: u64) -> Result<Option<TicketRecord>> {
        self.get("tickets", &id.to_be_bytes())
    }
    pub fn put_ticket(&self, ticket: &TicketRecord) -> Result<()> {
        self.put("tickets", &ticket.id.to_be_bytes(), ticket)?;
        crate::state::journal::changed();
        Ok(())
    }
    /// Tickets newest first.
    pub fn tickets(&self) -> Result<Vec<TicketRecord>> {
        let mut all: Vec<TicketRecord> = self.all("tickets")?;
        all.reverse();
        Ok(all)
    }

    /// A project's webhook secret, if one was made.
    pub fn webhook_secret(&self, project: &str) -> Result<Option<String>> {
        self.get("webhook_secrets", project.as_bytes())
    }
    pub fn put_webhook_secret(&self, project: &str, secret: &str) -> Result<()> {
        self.put("webhook_secrets", project.as_bytes(), &secret)
    }

    /// The ticket a webhook delivery made, if that delivery was seen before.
    pub fn delivery(&self, key: &str) -> Result<Option<u64>> {
        self.get("deliveries", key.as_bytes())
    }
    pub fn put_delivery(&self, key: &str, ticket: u64) -> Result<()> {
        self.put("deliveries", key.as_bytes(), &ticket)
    }
}

impl Store {
    /// Claim webhook delivery `key` for this request: `None` when it is new (now claimed),
    /// else the ticket it made (0: another request is making it right now).
    pub fn claim_delivery(&self, key: &str) -> Result<Option<u64>> {
        let claim = serde_json::to_vec(&0u64).map_err(crate::state::backend::store_err)?;
        if self.backend().compare_and_swap("deliveries", key.as_bytes(), None, Some(&claim))? {
            self.flush()?;
            return Ok(None);
        }
        Ok(Some(self.delivery(key)?.unwrap_or(0)))
    }

    /// Give a claimed delivery up (its ticket could not be made: a redelivery may try again).
    pub fn forget_delivery(&self, key: &str) -> Result<()> {
        self.remove("deliveries", key.as_bytes()).map(|_| ())
    }
}

impl Store {
    /// Keep a notification that was given up on (newest last).
    pub fn record_failed_notification(&self, record: &serde_json::Value) -> Result<()> {
        let n = self.backend().increment("next_failed_notification")?;
        self.put("failed_notifications", &n.to_be_bytes(), record)
    }

    pub fn failed_notifications(&self) -> Result<Vec<serde_json::Value>> {
        self.all("failed_notifications")
    }
}
