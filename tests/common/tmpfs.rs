//! A small tmpfs mounted for one test (a state dir whose file system can be
//! filled and freed at will), unmounted when dropped, whatever the test's
//! outcome. Mounting needs root; where it is refused the test is skipped
//! with a loud message instead of failing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// A mounted tmpfs; unmounted on drop.
pub struct Tmpfs {
    dir: TempDir,
    filler: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. "16m")
    /// on a fresh temp dir, or returns None after saying loudly why not.
    pub fn mount(size: &str) -> Option<Self> {
        let dir = TempDir::new().unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => {}
            other => {
                eprintln!(
                    "\n######## SKIPPED: cannot mount a tmpfs (needs root): {other:?} ########\n"
                );
                return None;
            }
        }
        let filler = dir.path().join("filler");
        Some(Tmpfs { dir, filler })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Takes every free byte with a file of zeros: any write that needs a
    /// new block fails with ENOSPC from now on.
    pub fn fill(&self) {
        let mut file = std::fs::File::create(&self.filler).unwrap();
        for chunk in [1 << 16, 4096, 1] {
            let zeros = vec![0u8; chunk];
            while file.write_all(&zeros).is_ok() {}
        }
    }

    /// Gives the space back.
    pub fn free(&self) {
        std::fs::remove_file(&self.filler).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = self.dir.path();
        let unmounted = Command::new("umount")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still has a file open there: detach it anyway.
            let _ = Command::new("umount").arg("-l").arg(path).status();
        }
    }
}
