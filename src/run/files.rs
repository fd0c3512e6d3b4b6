//! The files of one run: the callback FIFO, the private extra-vars file and
//! Ansible's temp dir, side by side in the runtime directory.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::net::unix::pipe;

/// Files of one run, side by side in the runtime directory: the paths
/// share a prefix unique to the run (no directory per run, which would cost
/// two more file-system operations per task).
#[derive(Clone)]
pub(super) struct RunFiles {
    /// The common prefix; also the run's marker.
    pub(super) base: PathBuf,
    /// The extra vars, as JSON (only when there are extra vars).
    pub(super) extra_vars: PathBuf,
    /// The callback plugin's FIFO.
    pub(super) events_path: PathBuf,
    /// `ANSIBLE_LOCAL_TEMP`.
    pub(super) temp_dir: PathBuf,
}

impl RunFiles {
    /// Paths for a run of `task_id`, unique to the run.
    pub(super) fn new(runtime_dir: &Path, task_id: &str) -> Self {
        let base = runtime_dir.join(format!("{task_id}-{:08x}", fastrand::u32(..)));
        let with = |suffix: &str| {
            let mut path = base.clone().into_os_string();
            path.push(suffix);
            PathBuf::from(path)
        };
        RunFiles {
            extra_vars: with(".vars.json"),
            events_path: with(".events"),
            temp_dir: with(".tmp"),
            base,
        }
    }

    /// Creates the private extra vars file (if there are extra vars) and the
    /// callback FIFO, which it opens. Ansible creates its temp dir itself.
    pub(super) fn create(
        &self,
        extra_vars: &serde_json::Map<String, serde_json::Value>,
    ) -> io::Result<pipe::Receiver> {
        if !extra_vars.is_empty() {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&self.extra_vars)?;
            serde_json::to_writer(file, extra_vars)?;
        }
        nix::unistd::mkfifo(&self.events_path, nix::sys::stat::Mode::S_IRWXU)?;
        // Opened read-write so the FIFO never reports EOF: the run ends when the
        // process exits, not when the last writer closes (ANSIBLE-NOTES.md).
        pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&self.events_path)
    }

    /// Removes whichever of the run's files exist.
    pub(super) fn remove(&self) -> io::Result<()> {
        let gone = |result: io::Result<()>| match result {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        gone(std::fs::remove_file(&self.events_path))?;
        gone(std::fs::remove_file(&self.extra_vars))?;
        gone(std::fs::remove_dir_all(&self.temp_dir))
    }
}
