//! Disk-full faults for local nodes: the node's data dir is a small tmpfs
//! mounted before the node first starts; filling it with a ballast file
//! makes every write fail with ENOSPC, removing the ballast frees it again.
//! The node is expected to stay up through it and resume by itself.
//!
//! tmpfs rather than a loop-mounted image: it needs no image file, no
//! mkfs and no loop device (often missing in containers), and ENOSPC is
//! what matters here, not the filesystem. `TmpfsMount`'s `Drop` unmounts.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// A mounted tmpfs; unmounted (lazily, so a lingering file handle cannot
/// keep it) when dropped.
pub struct TmpfsMount {
    path: PathBuf,
    mounted: bool,
}

const BALLAST: &str = "chaos-ballast";

impl TmpfsMount {
    pub fn mount(path: &Path, size_mib: u64) -> anyhow::Result<TmpfsMount> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m"),
                "floe-chaos",
            ])
            .arg(path)
            .output()
            .context("running mount (are we root?)")?;
        if !output.status.success() {
            bail!(
                "mount tmpfs on {}: {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        tracing::info!(path = %path.display(), size_mib, "tmpfs mounted for a disk-full fault");
        Ok(TmpfsMount {
            path: path.to_path_buf(),
            mounted: true,
        })
    }

    /// Writes a ballast file until the filesystem is full.
    pub fn fill(&self) -> anyhow::Result<()> {
        use std::io::Write as _;
        let ballast = self.path.join(BALLAST);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ballast)?;
        let chunk = vec![0u8; 1 << 20];
        // Bounded by the filesystem size; stops at the first ENOSPC.
        for _ in 0..4096 {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        // Fill the last partial megabyte too.
        for _ in 0..256 {
            if file.write_all(&chunk[..4096]).is_err() {
                break;
            }
        }
        let _ = file.sync_all();
        tracing::info!(path = %self.path.display(), "filesystem filled");
        Ok(())
    }

    pub fn free(&self) -> anyhow::Result<()> {
        let ballast = self.path.join(BALLAST);
        if ballast.exists() {
            std::fs::remove_file(&ballast)
                .with_context(|| format!("removing {}", ballast.display()))?;
        }
        Ok(())
    }

    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        let status = Command::new("umount").arg("-l").arg(&self.path).status();
        if !matches!(status, Ok(status) if status.success()) {
            tracing::warn!(path = %self.path.display(), "could not unmount tmpfs");
        }
        self.mounted = false;
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        self.unmount();
    }
}
