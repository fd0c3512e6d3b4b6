//! Ansible's two human output streams of a run: stdout is forwarded line by
//! line (log tail, live view); stderr is kept as a bounded tail for error
//! messages about failures before any task ran.
//!
//! A task may print megabytes without a newline: each line is cut at
//! [`MAX_LINE_BYTES`] and the rest of it, up to the newline, is read and
//! dropped, so what a run prints never grows the worker's memory.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::RunEvents;
use crate::table::LOG_LINE_CHARS;

/// How much of Ansible's stderr is kept for error messages.
const STDERR_TAIL_BYTES: usize = 4096;
/// Longest line kept, in bytes: room for the table's longest log line
/// ([`LOG_LINE_CHARS`]) of 4-byte characters.
pub(super) const MAX_LINE_BYTES: usize = 4 * LOG_LINE_CHARS;

/// Bytes asked for per read. The buffer is filled by `read_buf`, never
/// zeroed first (a zeroed 8 KiB buffer per stream, two per run, cost more
/// than the rest of reading a short run's output).
const READ_CHUNK: usize = 8 * 1024;

/// Reads lines of at most `max` bytes from a stream; the rest of a longer
/// line is skipped. Holds at most its read buffer and `max` bytes.
pub(super) struct BoundedLines<R> {
    reader: R,
    /// What was read and not yet consumed: `buffer[start..]`.
    buffer: Vec<u8>,
    start: usize,
    line: Vec<u8>,
    max: usize,
}

impl<R: AsyncRead + Unpin> BoundedLines<R> {
    pub(super) fn new(out: R, max: usize) -> Self {
        BoundedLines {
            reader: out,
            buffer: Vec::with_capacity(READ_CHUNK),
            start: 0,
            line: Vec::with_capacity(max),
            max,
        }
    }

    /// Reads more when everything read was consumed; nothing is left
    /// unconsumed after it only at the end of the stream.
    async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
            self.reader.read_buf(&mut self.buffer).await?;
        }
        Ok(())
    }

    /// The next line without its `\n` (or `\r\n`), cut at `max` bytes; None
    /// at the end of the stream. Invalid UTF-8 is replaced.
    pub(super) async fn next_line(&mut self) -> io::Result<Option<String>> {
        self.line.clear();
        let mut read_any = false;
        loop {
            self.fill().await?;
            let available = &self.buffer[self.start..];
            if available.is_empty() {
                if !read_any {
                    return Ok(None);
                }
                break;
            }
            read_any = true;
            let newline = available.iter().position(|b| *b == b'\n');
            let content = &available[..newline.unwrap_or(available.len())];
            let room = self.max - self.line.len();
            self.line
                .extend_from_slice(&content[..content.len().min(room)]);
            let used = newline.map_or(available.len(), |n| n + 1);
            self.start += used;
            if newline.is_some() {
                break;
            }
        }
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        Ok(Some(String::from_utf8_lossy(&self.line).into_owned()))
    }

    /// Bytes held for the current line (never more than `max`).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.line.capacity()
    }
}

pub(super) async fn forward_lines(out: impl AsyncRead + Unpin, events: &dyn RunEvents) {
    let mut lines = BoundedLines::new(out, MAX_LINE_BYTES);
    while let Ok(Some(line)) = lines.next_line().await {
        events.output(&line);
    }
}

pub(super) async fn read_tail(err: impl AsyncRead + Unpin) -> String {
    let mut lines = BoundedLines::new(err, STDERR_TAIL_BYTES);
    let mut tail: Vec<u8> = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        tail.extend_from_slice(line.as_bytes());
        tail.push(b'\n');
        if tail.len() > STDERR_TAIL_BYTES * 2 {
            tail.drain(..tail.len() - STDERR_TAIL_BYTES);
        }
    }
    let start = tail.len().saturating_sub(STDERR_TAIL_BYTES);
    String::from_utf8_lossy(&tail[start..]).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::model::{Counters, RunEvent};

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl RunEvents for Lines {
        fn progress(&self, _: Counters) {}
        fn output(&self, line: &str) {
            self.0.lock().unwrap().push(line.to_owned());
        }
        fn event(&self, _: RunEvent) {}
    }

    /// Writes `MiB` mebibytes without a newline, then two short lines.
    async fn endless_line(mut writer: tokio::io::DuplexStream, mib: usize) {
        let chunk = vec![b'x'; 1024 * 1024];
        writer.write_all(b"first\r\n").await.unwrap();
        for _ in 0..mib {
            writer.write_all(&chunk).await.unwrap();
        }
        writer.write_all(b"\nnext\nlast").await.unwrap();
    }

    #[tokio::test]
    async fn a_line_of_megabytes_is_cut_and_reading_goes_on() {
        let (writer, reader) = tokio::io::duplex(64 * 1024);
        let writing = tokio::spawn(endless_line(writer, 16));
        let events = Lines::default();
        forward_lines(reader, &events).await;
        writing.await.unwrap();
        let lines = events.0.into_inner().unwrap();
        assert_eq!(
            lines.len(),
            4,
            "{:?}",
            lines.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!(lines[0], "first");
        assert_eq!(lines[1], "x".repeat(MAX_LINE_BYTES));
        assert_eq!(lines[2..], ["next", "last"]);
    }

    #[tokio::test]
    async fn the_reader_never_holds_more_than_one_cut_line() {
        let (writer, reader) = tokio::io::duplex(64 * 1024);
        let writing = tokio::spawn(endless_line(writer, 8));
        let mut lines = BoundedLines::new(reader, 1000);
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            assert!(lines.held() <= 1000, "{}", lines.held());
            seen.push(line.len());
        }
        writing.await.unwrap();
        assert_eq!(seen, [5, 1000, 4, 4]);
    }

    #[tokio::test]
    async fn the_stderr_tail_survives_an_endless_line() {
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let writing = tokio::spawn(async move {
            writer
                .write_all(&vec![b'e'; 4 * 1024 * 1024])
                .await
                .unwrap();
            writer
                .write_all(b"\nERROR! the real reason\n")
                .await
                .unwrap();
        });
        let tail = read_tail(reader).await;
        writing.await.unwrap();
        assert!(tail.len() <= STDERR_TAIL_BYTES, "{}", tail.len());
        assert!(tail.ends_with("\nERROR! the real reason"), "{tail}");
    }
}
