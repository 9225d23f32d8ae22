//! The Dockerfile and .dockerignore: hadolint, pinned bases, the build inputs.

use super::*;

/// Its instructions with continuation lines joined and comments dropped.
pub(crate) fn dockerfile_instructions() -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// The shell command of the Dockerfile's `HEALTHCHECK CMD ["bash", "-c", "..."]`.
pub(crate) fn healthcheck_command() -> String {
    let line = dockerfile_instructions()
        .into_iter()
        .find(|i| i.starts_with("HEALTHCHECK"))
        .expect("the Dockerfile has a HEALTHCHECK");
    let exec = &line[line.find(" CMD ").expect("HEALTHCHECK ... CMD") + 5..];
    let argv: Vec<String> = serde_json::from_str(exec.trim())
        .unwrap_or_else(|e| panic!("HEALTHCHECK CMD is not an exec-form JSON array: {e}: {exec}"));
    assert_eq!(argv[..2], ["bash", "-c"], "{argv:?}");
    assert!(argv[2].contains("/healthz"), "{argv:?}");
    argv[2].clone()
}

#[test]
fn dockerfile_passes_hadolint_with_every_ignore_explained() {
    let (ok, text) = output(
        Command::new(venv_tool("hadolint"))
            .args(["--no-color", "--failure-threshold", "style"])
            .arg(root().join("Dockerfile")),
    );
    assert!(ok && text.trim().is_empty(), "hadolint:\n{text}");
    // An inline ignore must follow a comment saying why.
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("hadolint ignore=") {
            let before = i.checked_sub(1).map(|j| lines[j].trim()).unwrap_or("");
            assert!(
                before.starts_with('#') && before.len() > 20 && !before.contains("hadolint"),
                "line {}: `{line}` has no explanation on the line above",
                i + 1
            );
        }
    }
}

#[test]
fn dockerfile_stages_are_pinned_and_share_a_debian_release() {
    let instructions = dockerfile_instructions();
    let froms: Vec<&str> = instructions
        .iter()
        .filter_map(|i| i.strip_prefix("FROM "))
        .map(|f| f.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(froms.len(), 2, "a build and a runtime stage: {froms:?}");
    // debian:bookworm-YYYYMMDD[-slim]: a dated Debian 12 release, so both stages (and the
    // binary's glibc) match.
    let release = |image: &str| -> String {
        let tag = image
            .strip_prefix("debian:bookworm-")
            .unwrap_or_else(|| panic!("{image} is not a pinned debian:bookworm-<date> image"));
        let date = tag.strip_suffix("-slim").unwrap_or(tag);
        assert!(
            date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()),
            "{image} is not pinned to a dated release"
        );
        date.to_string()
    };
    assert_eq!(release(froms[0]), release(froms[1]), "{froms:?}");
    assert!(froms[1].ends_with("-slim"), "the runtime stage is slim");
    let runtime_from = format!("FROM {}", froms[1]);
    let runtime: Vec<&String> = instructions
        .iter()
        .skip_while(|i| !i.starts_with(&runtime_from))
        .collect();
    let has = |prefix: &str| runtime.iter().any(|i| i.starts_with(prefix));
    assert!(has(&format!("EXPOSE {DEFAULT_PORT}")), "{runtime:?}");
    assert!(
        has("ENTRYPOINT [\"/usr/local/bin/ayaflow\"]"),
        "{runtime:?}"
    );
    assert!(has("HEALTHCHECK "), "{runtime:?}");
    // Only the binary comes from the build stage; no package installed at run time.
    let copies: Vec<&&String> = runtime.iter().filter(|i| i.starts_with("COPY")).collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(copies[0].starts_with("COPY --from=build "), "{copies:?}");
    assert!(
        !has("RUN "),
        "the runtime stage installs nothing: {runtime:?}"
    );
    // Nothing that looks like a secret passed into the image.
    for i in &instructions {
        let upper = i.to_uppercase();
        for word in ["PASSWORD", "TOKEN", "SECRET", "API_KEY"] {
            assert!(!upper.contains(word), "`{i}` mentions {word}");
        }
    }
}

#[test]
fn dockerignore_lets_in_exactly_the_build_inputs() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        patterns.first().map(String::as_str),
        Some("*"),
        "an allowlist: everything out first"
    );
    let allowed: BTreeSet<&str> = patterns
        .iter()
        .filter_map(|p| p.strip_prefix('!'))
        .map(|p| p.trim_end_matches('/'))
        .collect();
    // Every workspace member (cargo loads them all), the kernel crate, the manifests.
    let manifest: toml_lite::Members = toml_lite::members(&read("Cargo.toml"));
    for needed in manifest.members.iter().map(String::as_str).chain([
        "ayaflow-ebpf",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo",
    ]) {
        assert!(
            allowed.contains(needed),
            ".dockerignore keeps out {needed}, which the build needs"
        );
    }
    // Build output and local state stay out even inside allowed folders.
    for out in ["**/target", "**/*.db*"] {
        assert!(
            patterns.iter().any(|p| p == out),
            ".dockerignore lacks {out}"
        );
    }
}

/// Just enough TOML for the workspace's `members = [...]`.
pub(crate) mod toml_lite {
    pub struct Members {
        pub members: Vec<String>,
    }

    pub fn members(text: &str) -> Members {
        let start = text
            .find("\nmembers = [")
            .expect("members = [ in Cargo.toml")
            + 12;
        let end = start + text[start..].find(']').expect("members = [...]");
        Members {
            members: text[start..end]
                .split(',')
                .map(|m| m.trim().trim_matches('"').to_string())
                .filter(|m| !m.is_empty())
                .collect(),
        }
    }
}
