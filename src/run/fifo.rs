//! The callback plugin's FIFO: JSON lines as they arrive during the run, and
//! whatever is left once `ansible-playbook` exited.
//!
//! The worker holds the FIFO open for writing too, so it never reports EOF
//! (ANSIBLE-NOTES.md); instead, once the process is gone everything its
//! callback wrote is already in the pipe, and a non-blocking read until
//! "would block" collects the rest without waiting on a timer.

use std::io;
use std::os::fd::AsRawFd;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// Reads lines from the callback FIFO.
pub(super) struct CallbackFifo {
    pipe: pipe::Receiver,
    pending: Vec<u8>,
    chunk: Box<[u8]>,
}

impl CallbackFifo {
    pub(super) fn new(pipe: pipe::Receiver) -> Self {
        CallbackFifo {
            pipe,
            pending: Vec::new(),
            chunk: vec![0; 64 * 1024].into_boxed_slice(),
        }
    }

    /// Waits for more data and hands every complete line to `line`.
    /// Cancel safe: nothing read is lost when the future is dropped.
    pub(super) async fn read_lines(&mut self, line: impl FnMut(&str)) -> io::Result<()> {
        let n = self.pipe.read(&mut self.chunk).await?;
        self.pending.extend_from_slice(&self.chunk[..n]);
        self.take_lines(line, false);
        Ok(())
    }

    /// After the process exited: reads what is left without waiting and
    /// hands every line, a last unterminated one included, to `line`.
    pub(super) fn drain(&mut self, line: impl FnMut(&str)) {
        // The fd is non-blocking; reading it directly (not through the
        // reactor's readiness) tells "empty" from "not polled yet".
        while let Ok(n @ 1..) = nix::unistd::read(self.pipe.as_raw_fd(), &mut self.chunk) {
            self.pending.extend_from_slice(&self.chunk[..n]);
        }
        self.take_lines(line, true);
    }

    fn take_lines(&mut self, mut line: impl FnMut(&str), all: bool) {
        let mut start = 0;
        while let Some(end) = self.pending[start..].iter().position(|b| *b == b'\n') {
            line(&String::from_utf8_lossy(&self.pending[start..start + end]));
            start += end + 1;
        }
        if all && start < self.pending.len() {
            line(&String::from_utf8_lossy(&self.pending[start..]));
            start = self.pending.len();
        }
        self.pending.drain(..start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_split_across_reads_and_the_rest_is_drained_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let receiver = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)
            .unwrap();
        let mut fifo = CallbackFifo::new(receiver);
        let mut writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        use std::io::Write;
        writer.write_all(b"{\"a\":1}\n{\"b\"").unwrap();
        let mut seen = Vec::new();
        fifo.read_lines(|l| seen.push(l.to_owned())).await.unwrap();
        assert_eq!(seen, ["{\"a\":1}"]);
        writer.write_all(b":2}\n{\"c\":3}\n{\"d\"").unwrap();
        drop(writer);
        let started = std::time::Instant::now();
        fifo.drain(|l| seen.push(l.to_owned()));
        assert!(started.elapsed() < std::time::Duration::from_millis(20));
        assert_eq!(seen, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}", "{\"d\""]);
    }
}
