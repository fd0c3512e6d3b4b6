//! TCP_NODELAY for rumqttd's own sockets, which it never sets and has no
//! option for (MQTT-NOTES.md).
//!
//! Without it, a small packet rumqttd writes while an earlier one is still
//! unacknowledged waits for the peer's delayed ACK: about 40 ms from a
//! request's publish to the worker's final status. Linux copies TCP_NODELAY
//! from a listening socket to every connection it accepts, so setting it once
//! on rumqttd's private listeners, found among this process's own file
//! descriptors, covers the worker's connection and the front door's.

use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, RawFd};

/// Sets TCP_NODELAY on this process's listening sockets bound to one of
/// `addrs`; returns how many it found.
// Unsafe (as is `run::spawn`, the crate's only other such place): std
// offers no safe way to borrow a socket another library owns, and rumqttd
// does not hand its listeners out.
#[allow(unsafe_code)]
pub fn on_listeners(addrs: &[SocketAddr]) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut found = 0;
    for entry in entries.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is only borrowed for getsockname,
        // getpeername and setsockopt, none of which closes or consumes it,
        // and ManuallyDrop keeps the wrapper from closing it afterwards. Were
        // it closed and reused meanwhile, these calls would fail or set the
        // option on another of this process's sockets, which is harmless.
        let socket = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        let listening = socket.peer_addr().is_err();
        let ours = socket.local_addr().is_ok_and(|addr| addrs.contains(&addr));
        if listening && ours && socket.set_nodelay(true).is_ok() {
            found += 1;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_accepted_afterwards_inherit_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).unwrap();
        let (before, _) = listener.accept().unwrap();
        assert_eq!(on_listeners(&[addr]), 1);
        let _client = TcpStream::connect(addr).unwrap();
        let (after, _) = listener.accept().unwrap();
        assert!(!before.nodelay().unwrap());
        assert!(after.nodelay().unwrap());
    }
}
