//! The controller's state: its home (`pki/`, `state/`, `cache/`) and the sled store behind a
//! narrow interface.

pub mod agents;
pub mod artifacts;
pub mod audit;
pub mod backend;
pub mod freezes;
pub mod home;
pub mod joins;
pub mod journal;
pub mod leader;
pub mod postgres;
pub mod revisions;
pub mod shared_pki;
pub mod sign_in;
pub mod store;
pub mod tickets;
pub mod users;
