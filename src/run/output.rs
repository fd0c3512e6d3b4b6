//! Ansible's two human output streams of a run: stdout is forwarded line by
//! line (log tail, live view); stderr is kept as a bounded tail for error
//! messages about failures before any task ran.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::RunEvents;

/// How much of Ansible's stderr is kept for error messages.
const STDERR_TAIL_BYTES: usize = 4096;

pub(super) async fn forward_lines(out: impl AsyncRead + Unpin, events: &dyn RunEvents) {
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        events.output(&line);
    }
}

pub(super) async fn read_tail(err: impl AsyncRead + Unpin) -> String {
    let mut reader = BufReader::new(err);
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                tail.extend_from_slice(&buf);
                if tail.len() > STDERR_TAIL_BYTES * 2 {
                    tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                }
            }
        }
    }
    let start = tail.len().saturating_sub(STDERR_TAIL_BYTES);
    String::from_utf8_lossy(&tail[start..]).trim().to_owned()
}
