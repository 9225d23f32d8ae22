//! The agent binary with `--api-token-file`: probes open, every other route 401 without the
//! token and served with it; an empty token file stops the agent at start, naming the file.

use integration_test::{
    agent::{Agent, binary, http_get_with},
    netns::NetPair,
    require_bpf,
};

#[test]
fn a_token_file_guards_the_api_of_the_real_agent() {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("api-token");
    // `echo` writes a newline: it is not part of the token.
    std::fs::write(&token_file, "e2e-token-0123456789\n").unwrap();
    // Agent::start waits for /readyz, which needs no token.
    let agent = Agent::start_on_b(
        &pair,
        &dir.path().join("h.db"),
        &["--api-token-file", token_file.to_str().unwrap()],
    );
    let get = |path: &str, headers: &[(&str, &str)]| {
        http_get_with(&agent.ns, agent.port, path, headers).expect("the agent answers")
    };
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(get(probe, &[]).status, 200, "{probe}");
    }
    for path in ["/metrics", "/api/live", "/api/history"] {
        let r = get(path, &[]);
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert!(r.head.contains("www-authenticate: bearer"), "{}", r.head);
        let wrong = get(path, &[("Authorization", "Bearer e2e-token-012345678")]);
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
        let ok = get(path, &[("Authorization", "Bearer e2e-token-0123456789")]);
        assert_eq!(ok.status, 200, "{path} with the token: {}", ok.body);
    }
    let metrics = get(
        "/metrics",
        &[("Authorization", "Bearer e2e-token-0123456789")],
    )
    .body;
    assert_eq!(
        integration_test::agent::metric(&metrics, "ayaflow_api_unauthorized_total"),
        Some(6),
        "{metrics}"
    );
    assert!(agent.terminate().success());

    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "  \n").unwrap();
    let out = NetPair::command(&pair.ns_b, binary().to_str().unwrap())
        .args(["--interface", &pair.if_b, "--port", "3002", "--db-path"])
        .arg(dir.path().join("h2.db"))
        .arg("--api-token-file")
        .arg(&empty)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(empty.to_str().unwrap()) && stderr.contains("is empty"),
        "{stderr}"
    );
}
