//! The callback plugin's FIFOs: JSON lines as they arrive during a run, and
//! whatever is left once `ansible-playbook` exited.
//!
//! The worker holds each FIFO open for writing too, so it never reports EOF
//! (ANSIBLE-NOTES.md); instead, once the process is gone everything its
//! callback wrote is already in the pipe, and a non-blocking read until
//! "would block" collects the rest without waiting on a timer.
//!
//! FIFOs are kept open and reused from run to run ([`FifoPool`]): making,
//! opening, registering and removing one per run cost more than the rest
//! of the worker's file-system work together. A run gets a FIFO emptied of
//! anything an earlier run's killed processes may have left in it.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// Bytes read from a FIFO at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Reads lines from one callback FIFO.
pub(super) struct CallbackFifo {
    path: PathBuf,
    pipe: pipe::Receiver,
    pending: Vec<u8>,
    /// Read buffer, kept with the FIFO from run to run.
    chunk: Box<[u8]>,
}

impl CallbackFifo {
    /// Makes a FIFO at `path` (replacing what an earlier process left
    /// there) and opens it.
    fn make(path: PathBuf) -> io::Result<Self> {
        let mode = nix::sys::stat::Mode::S_IRWXU;
        match nix::unistd::mkfifo(&path, mode) {
            Err(nix::errno::Errno::EEXIST) => {
                std::fs::remove_file(&path)?;
                nix::unistd::mkfifo(&path, mode)?;
            }
            other => other?,
        }
        // Opened read-write so the FIFO never reports EOF: the run ends when
        // the process exits, not when the last writer closes.
        let pipe = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)?;
        Ok(CallbackFifo {
            path,
            pipe,
            pending: Vec::new(),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
        })
    }

    /// Where the callback plugin writes.
    pub(super) fn path(&self) -> &Path {
        &self.path
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
        self.read_available(true);
        self.take_lines(line, true);
    }

    /// Drops whatever the FIFO holds.
    fn discard(&mut self) {
        self.read_available(false);
        self.pending.clear();
    }

    /// Reads until the FIFO is empty, keeping the bytes when `keep`.
    fn read_available(&mut self, keep: bool) {
        // The fd is non-blocking; reading it directly (not through the
        // reactor's readiness) tells "empty" from "not polled yet".
        while let Ok(n @ 1..) = nix::unistd::read(self.pipe.as_raw_fd(), &mut self.chunk) {
            if keep {
                self.pending.extend_from_slice(&self.chunk[..n]);
            }
        }
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

/// The FIFOs of the runs, made as needed (one per run going on at once, at
/// most) in a private directory and kept open for later runs.
pub(super) struct FifoPool {
    dir: PathBuf,
    free: Mutex<Vec<CallbackFifo>>,
    made: Mutex<usize>,
}

impl FifoPool {
    /// A pool making its FIFOs in `dir` (which must exist).
    pub(super) fn new(dir: PathBuf) -> Self {
        FifoPool {
            dir,
            free: Mutex::new(Vec::new()),
            made: Mutex::new(0),
        }
    }

    /// An empty FIFO for one run; it goes back to the pool when the lease
    /// drops.
    pub(super) fn take(&self) -> io::Result<FifoLease<'_>> {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut fifo = match free {
            Some(fifo) => fifo,
            None => {
                let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
                let fifo = CallbackFifo::make(self.dir.join(format!("events-{}", *made)))?;
                *made += 1;
                fifo
            }
        };
        fifo.discard();
        Ok(FifoLease {
            pool: self,
            fifo: Some(fifo),
        })
    }
}

/// A FIFO taken from a [`FifoPool`] for one run.
pub(super) struct FifoLease<'a> {
    pool: &'a FifoPool,
    fifo: Option<CallbackFifo>,
}

impl std::ops::Deref for FifoLease<'_> {
    type Target = CallbackFifo;

    fn deref(&self) -> &CallbackFifo {
        self.fifo.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for FifoLease<'_> {
    fn deref_mut(&mut self) -> &mut CallbackFifo {
        self.fifo.as_mut().expect("held until dropped")
    }
}

impl Drop for FifoLease<'_> {
    fn drop(&mut self) {
        if let Some(fifo) = self.fifo.take() {
            self.pool
                .free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(fifo);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn writer(path: &Path) -> std::fs::File {
        std::fs::OpenOptions::new().write(true).open(path).unwrap()
    }

    #[tokio::test]
    async fn lines_split_across_reads_and_the_rest_is_drained_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FifoPool::new(dir.path().to_owned());
        let mut fifo = pool.take().unwrap();
        let mut writer = writer(fifo.path());
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

    #[tokio::test]
    async fn a_reused_fifo_holds_nothing_of_the_run_before() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FifoPool::new(dir.path().to_owned());
        let first = pool.take().unwrap();
        let path = first.path().to_owned();
        // Two runs at once get two FIFOs.
        assert_ne!(pool.take().unwrap().path(), path);
        // A killed process of the first run wrote after its last read.
        writer(&path).write_all(b"{\"stale\":1}\n{\"half").unwrap();
        drop(first);
        let mut second = pool.take().unwrap();
        assert_eq!(second.path(), path, "the FIFO is reused");
        writer(&path).write_all(b"{\"fresh\":1}\n").unwrap();
        let mut seen = Vec::new();
        second.drain(|l| seen.push(l.to_owned()));
        assert_eq!(seen, ["{\"fresh\":1}"]);
    }
}
