//! End-to-end tests: the real `slipctl` and `slipd` binaries, real certificates, real git
//! repositories, real files and symlinks, agents on loopback.

mod attacker;
mod build;
mod cli;
mod delta;
mod deploy;
mod drain;
mod faults;
mod governance;
mod hooks;
mod hostile;
mod java;
mod joins;
mod migrate;
mod mtls;
mod packages;
mod projects;
mod promote;
mod pushed;
mod rollout;
mod served_cli;
mod server;
mod server_attacks;
mod server_ci;
mod server_load;
mod sign_in;
mod standby;
mod state;
mod store;
mod svn;
mod web;
