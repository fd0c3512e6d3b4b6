//! Watching a started child for its exit, and reaping it.

// pidfd_open has no safe wrapper in the crates we use.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::libc;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// How a child's exit is noticed: its pidfd turning readable, or, where
/// there are no pidfds (kernels before 5.3, some sandboxes, valgrind), any
/// SIGCHLD.
#[derive(Debug)]
pub(super) enum ExitWatch {
    Pidfd(AsyncFd<OwnedFd>),
    Signals(tokio::signal::unix::Signal),
}

impl ExitWatch {
    /// A watch on the child `pid` (by pidfd if `pidfd`), made before its
    /// exit status is first asked for (so a SIGCHLD that comes later is not
    /// missed).
    pub(super) fn new(pid: Pid, pidfd: bool) -> io::Result<Self> {
        if !pidfd {
            return Self::signals();
        }
        match pidfd_open(pid) {
            Ok(pidfd) => watch_exit(pidfd).map(ExitWatch::Pidfd),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS | libc::EPERM | libc::EACCES)
                ) =>
            {
                Self::signals()
            }
            Err(e) => Err(e),
        }
    }

    /// A watch on every SIGCHLD from now on.
    fn signals() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::child()).map(ExitWatch::Signals)
    }

    /// Waits until the process may have exited since the last call.
    pub(super) async fn changed(&mut self) -> io::Result<()> {
        match self {
            ExitWatch::Pidfd(pidfd) => pidfd.readable().await?.clear_ready(),
            ExitWatch::Signals(signals) => {
                signals.recv().await;
            }
        }
        Ok(())
    }
}

/// The status of `pid` if it exited (and is reaped now), `None` while it
/// runs.
pub(super) fn reap(pid: Pid) -> io::Result<Option<ExitStatus>> {
    Ok(match waitpid(pid, Some(WaitPidFlag::WNOHANG))? {
        WaitStatus::Exited(_, code) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
        WaitStatus::Signaled(_, signal, core) => Some(ExitStatus::from_raw(
            signal as i32 | if core { 0x80 } else { 0 },
        )),
        _ => None,
    })
}

/// A pidfd of the child `pid`, non-blocking and closed on exec.
fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: a plain system call with integer arguments; a non-negative
    // result is a new file descriptor nothing else owns.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), libc::PIDFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd as libc::c_int))
    }
}

/// Registers `pidfd` with the runtime, to learn when its process exits.
fn watch_exit(pidfd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` stays open, with the same descriptor, for as
    // long as the `AsyncFd` owns it.
    unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }.map_err(Into::into)
}
