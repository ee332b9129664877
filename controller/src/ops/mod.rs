//! The operations layer: what the command line, the HTTP API and the pages all call, so each
//! operation is written once (see `../shared/reviews/controller-structure.md`). It names none
//! of `cli`, `server` or `web`. This is its first part; tickets, users and runs still live in
//! `server/` and move here next (issue #21).
//!
//! `projects`: project files as numbered revisions — saved with who and when, refused when
//! based on an older revision, listed, compared and reverted. `users`: users, grants,
//! passwords and tokens. `secrets`: random tokens, digests and password hashes.

pub mod agents;
pub mod artifacts;
pub mod audit;
pub mod caller;
pub mod catch_up;
pub mod freezes;
pub mod joins;
pub mod projects;
pub mod runs;
pub mod secrets;
pub mod sign_in;
pub mod tickets;
pub mod users;
pub mod views;
pub mod waiting;

use std::sync::{Mutex, OnceLock};

use tokio::sync::watch;

use crate::state::home::Home;
use crate::state::store::Store;
use crate::state::tickets::TicketRecord;

/// Told of a ticket's change: the event (`ticket_created`, `ticket_approved`,
/// `ticket_rejected`), the ticket, and who did it.
pub type TicketObserver = Box<dyn Fn(&'static str, &TicketRecord, &str) + Send + Sync>;

/// What the operations share in a process that carries them out (the server): the home and
/// its store, the operations running here, and who hears of tickets.
pub struct Core {
    pub home: Home,
    pub store: Store,
    /// Operations carried out by this process, by deploy id.
    pub runs: runs::Runs,
    /// Serialises ticket changes (each is a read-modify-write of one record).
    pub ticket_lock: Mutex<()>,
    /// Turns true when the process is stopping.
    pub stopping: watch::Sender<bool>,
    /// Who hears of ticket changes (the server's notifications), set once at start.
    pub on_ticket: OnceLock<TicketObserver>,
    /// What each host runs and each env's last operation, fed as operations end.
    pub views: views::Views,
    /// What the last probe of each agent found.
    pub probes: agents::Probes,
    /// The URL hosts join at (the server's agents' endpoint), when it has one.
    pub join_url: OnceLock<String>,
}

impl Core {
    pub fn new(home: Home, store: Store) -> Core {
        Core {
            home,
            store,
            runs: runs::Runs::default(),
            ticket_lock: Mutex::new(()),
            stopping: watch::channel(false).0,
            on_ticket: OnceLock::new(),
            views: views::Views::default(),
            probes: agents::Probes::default(),
            join_url: OnceLock::new(),
        }
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Tell whoever listens that `ticket` changed (`event`, by `by`).
    pub fn ticket_changed(&self, event: &'static str, ticket: &TicketRecord, by: &str) {
        if let Some(observer) = self.on_ticket.get() {
            observer(event, ticket, by);
        }
    }
}
