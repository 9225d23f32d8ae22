//! A BPF filesystem of a test's own (`/sys/fs/bpf` is not mounted on the test machines, and a
//! test must not touch the host's anyway).

use std::{path::PathBuf, process::Command};

use crate::agent::run;

/// A bpffs mounted on a temp dir, unmounted on drop, which frees whatever is still pinned in it
/// (links detach, maps and programs go), even when the test failed half-way.
pub struct Bpffs {
    dir: tempfile::TempDir,
}

impl Bpffs {
    pub fn mount() -> Bpffs {
        let dir = tempfile::tempdir().expect("a temp dir for the bpffs");
        run(Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path()));
        Bpffs { dir }
    }

    /// Where the agent's `--pin-path` goes in it.
    pub fn pins(&self) -> PathBuf {
        self.dir.path().join("ayaflow")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}
