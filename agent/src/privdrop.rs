//! The agent's only `unsafe` code: switching a hook's child process to the target user between
//! `fork` and `exec` (supplementary groups, then gid, then uid — the order that works when
//! dropping from root). `std`'s `Command::uid` cannot set supplementary groups on stable Rust and
//! runs `pre_exec` only after its own `setuid`, so the whole switch happens here.
//!
//! After the switch it changes to the hook's working directory, so that path is resolved with the
//! target user's rights, not root's (std would `chdir` before `pre_exec`, as root).
//!
//! Safety: the closure runs in the forked child, which has a single thread. It only calls raw
//! syscalls through rustix (`setgroups`, `setresgid`, `setresuid`, `chdir`), which are
//! async-signal-safe, and allocates nothing: the group list and the path are built before the fork.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;

use rustix::process::{Gid, Uid};

/// Make `command` run as `uid`/`gid` with supplementary `groups`, in directory `cwd`.
pub fn run_as(command: &mut std::process::Command, uid: u32, gid: u32, groups: &[u32], cwd: &std::path::Path) {
    let groups: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let cwd = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(cwd.as_os_str())).unwrap_or_default();
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    // SAFETY: see the module documentation.
    unsafe {
        command.pre_exec(move || {
            rustix::thread::set_thread_groups(&groups)?;
            rustix::thread::set_thread_res_gid(gid, gid, gid)?;
            rustix::thread::set_thread_res_uid(uid, uid, uid)?;
            rustix::process::chdir(cwd.as_c_str())?;
            Ok(())
        });
    }
}
