//! Keeping the heap small: glibc's allocator tuned for a long-running
//! process with bursts.
//!
//! glibc returns freed memory to the system by itself only from the top of
//! a heap; what a burst of thousands of tasks freed in the middle (request
//! and status buffers, queues that grew) stays in the process.
//! `malloc_trim` hands those pages back. It walks every arena under its
//! lock, so the pool calls it only when the worker has just gone idle, and
//! [`IdleTrim`] spaces the calls out.
//!
//! glibc also gives each thread that allocates at the same time as another
//! an arena of its own, up to 8 per CPU, and each arena keeps its own free
//! memory. No more threads than CPUs run at once, and small allocations
//! mostly come from each thread's own cache, so [`limit_arenas`] caps the
//! arenas at one per CPU.
//!
//! This is the crate's third `unsafe` place (with `run/spawn.rs` and
//! `broker/nodelay.rs`): two foreign calls without preconditions.
#![allow(unsafe_code)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The least time between two trims.
const SPACING: Duration = Duration::from_millis(250);

/// Trims the heap when the worker goes idle, at most once per [`SPACING`].
#[derive(Debug, Default)]
pub struct IdleTrim {
    last: Mutex<Option<Instant>>,
}

impl IdleTrim {
    /// The worker has nothing queued or running any more: trim, unless the
    /// last trim was a moment ago.
    pub fn went_idle(&self) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < SPACING) {
            return;
        }
        *last = Some(Instant::now());
        drop(last);
        trim();
    }
}

/// Caps glibc's arenas at one per CPU (at least 2). Called once at start,
/// before other threads exist.
pub fn limit_arenas() {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let cpus = i32::try_from(cpus).unwrap_or(i32::MAX);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` takes a parameter number and a value and has no
    // preconditions; no other thread allocates yet.
    if unsafe { nix::libc::mallopt(nix::libc::M_ARENA_MAX, cpus) } != 1 {
        tracing::debug!("glibc did not take the arena limit");
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = cpus;
}

/// Returns free heap pages to the system; whether any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: `malloc_trim` takes a padding size and has no preconditions;
    // it locks each arena itself, so it is safe beside other threads'
    // allocations.
    unsafe { nix::libc::malloc_trim(0) == 1 }
}

/// Other allocators return memory by themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident set size of this process, in pages.
    fn resident_pages() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_small_blocks_in_the_middle_of_the_heap_go_back() {
        // 32 MiB in blocks far below glibc's mmap threshold, with a block
        // allocated after them kept alive, so that the heap's top stays in
        // use and glibc keeps the freed space by itself.
        let blocks: Vec<Vec<u8>> = (0..8_192).map(|_| vec![1u8; 4096]).collect();
        let pin = vec![1u8; 4096];
        drop(blocks);
        let before = resident_pages();
        assert!(trim(), "nothing was returned");
        let after = resident_pages();
        let page = 4096;
        assert!(
            before.saturating_sub(after) * page >= 16 << 20,
            "resident {before} → {after} pages"
        );
        drop(pin);
    }

    #[test]
    fn trims_are_spaced_out() {
        let trims = IdleTrim::default();
        trims.went_idle();
        let first = trims.last.lock().unwrap().unwrap();
        trims.went_idle();
        assert_eq!(
            *trims.last.lock().unwrap(),
            Some(first),
            "trimmed again at once"
        );
    }
}
