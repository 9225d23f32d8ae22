//! The DaemonSet's capabilities: the agent runs with exactly them, and needs each one.

use super::*;

#[test]
fn each_capability_is_needed() {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    for (missing, expect) in [
        ("BPF", "permission denied"),
        ("NET_ADMIN", "permission denied"),
        ("PERFMON", "CAP_PERFMON is missing"),
    ] {
        let caps: Vec<&str> = CAPABILITIES
            .iter()
            .copied()
            .filter(|c| *c != missing)
            .collect();
        let db = dir.path().join(format!("{missing}.db"));
        let mut cmd = NetPair::command(&pair.ns_b, "setpriv");
        cmd.args(&setpriv(&caps)[1..])
            .arg(binary())
            .args(["--interface", &pair.if_b, "--bind-address", "127.0.0.1"])
            .args(["--db-path", db.to_str().unwrap()])
            .stdin(Stdio::null());
        let mut child = KillOnDrop(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let status = wait_for(
            30,
            &format!("the agent without CAP_{missing} to exit"),
            || child.0.try_wait().ok().flatten(),
        );
        let mut log = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut log).unwrap();
        assert!(!status.success(), "the agent ran without CAP_{missing}");
        assert!(
            log.contains(expect),
            "without CAP_{missing} the error should say {expect:?}:\n{log}"
        );
    }
}
