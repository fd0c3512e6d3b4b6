//! The files of one run: the private extra-vars file and Ansible's temp
//! dir, side by side in the runtime directory (the callback FIFO comes from
//! `fifo::FifoPool`).

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Files of one run, side by side in the runtime directory: the paths
/// share a prefix unique to the run (no directory per run, which would cost
/// two more file-system operations per task).
pub(super) struct RunFiles {
    /// The common prefix; also the run's marker.
    pub(super) base: PathBuf,
    /// The extra vars, as JSON (only when there are extra vars).
    pub(super) extra_vars: PathBuf,
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
            temp_dir: with(".tmp"),
            base,
        }
    }

    /// Creates the private extra vars file (if there are extra vars).
    /// Ansible creates its temp dir itself.
    pub(super) fn create(
        &self,
        extra_vars: &serde_json::Map<String, serde_json::Value>,
    ) -> io::Result<()> {
        if !extra_vars.is_empty() {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&self.extra_vars)?;
            serde_json::to_writer(file, extra_vars)?;
        }
        Ok(())
    }

    /// Removes whichever of the run's files exist (the extra vars file only
    /// when `extra_vars` were written), logging what cannot be removed. The
    /// extra vars file goes at once; Ansible's temp
    /// dir, which may hold many files, goes on the blocking pool (the
    /// runtime waits for that at shutdown).
    pub(super) fn remove(&self, task_id: &str, extra_vars: bool) {
        let warn = |path: &Path, result: io::Result<()>| match result {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(%task_id, "cannot remove {}: {e}", path.display());
            }
            _ => {}
        };
        if extra_vars {
            warn(&self.extra_vars, std::fs::remove_file(&self.extra_vars));
        }
        if std::fs::symlink_metadata(&self.temp_dir).is_ok() {
            let (temp_dir, task_id) = (self.temp_dir.clone(), task_id.to_owned());
            tokio::task::spawn_blocking(move || {
                if let Err(e) = std::fs::remove_dir_all(&temp_dir) {
                    tracing::warn!(%task_id, "cannot remove {}: {e}", temp_dir.display());
                }
            });
        }
    }
}
