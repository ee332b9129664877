//! The operations layer: what the command line, the HTTP API and the pages all call, so each
//! operation is written once (see `../shared/reviews/controller-structure.md`). It names none
//! of `cli`, `server` or `web`. This is its first part; tickets, users and runs still live in
//! `server/` and move here next (issue #21).
//!
//! `projects`: project files as numbered revisions — saved with who and when, refused when
//! based on an older revision, listed, compared and reverted. `users`: users, grants,
//! passwords and tokens. `secrets`: random tokens, digests and password hashes.

pub mod projects;
pub mod secrets;
pub mod users;
