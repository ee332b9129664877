//! The agent's only `unsafe` code: switching a hook's child process to the target user between
//! `fork` and `exec` (supplementary groups, then gid, then uid — the order that works when
//! dropping from root). `std`'s `Command::uid` cannot set supplementary groups on stable Rust and
//! runs `pre_exec` only after its own `setuid`, so the whole switch happens here.
//!
//! Safety: the closure runs in the forked child, which has a single thread. It only calls raw
//! syscalls through rustix (`setgroups`, `setresgid`, `setresuid`), which are async-signal-safe,
//! and allocates nothing: the group list is built before the fork.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;

use rustix::process::{Gid, Uid};

/// Make `command` run as `uid`/`gid` with supplementary `groups`.
pub fn run_as(command: &mut std::process::Command, uid: u32, gid: u32, groups: &[u32]) {
    let groups: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    // SAFETY: see the module documentation.
    unsafe {
        command.pre_exec(move || {
            rustix::thread::set_thread_groups(&groups)?;
            rustix::thread::set_thread_res_gid(gid, gid, gid)?;
            rustix::thread::set_thread_res_uid(uid, uid, uid)?;
            Ok(())
        });
    }
}
