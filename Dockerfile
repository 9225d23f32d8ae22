# syntax=docker/dockerfile:1
#
# ayaFlow agent image: `docker build -t ayaflow:latest .`, then (README, "Docker")
#   docker run -d --name ayaflow --net=host \
#     --cap-drop=ALL --cap-add=BPF --cap-add=NET_ADMIN --cap-add=PERFMON \
#     -v /sys/fs/bpf:/sys/fs/bpf -v ayaflow-data:/var/lib/ayaflow \
#     ayaflow:latest --interface eth0
#
# Build stage: the same steps as the README's prerequisites on Debian 12 (what `cargo xtask
# build --release` does there): Debian's BPF-capable Rust (rustc-web, with a prebuilt `core`
# for bpfel-unknown-none) and LLVM 22, bpf-linker built against that LLVM, then one cargo build
# whose build.rs compiles the kernel program and embeds it in the agent. Everything comes from
# deb.debian.org and crates.io. The base images are pinned to a dated Debian 12 release; the
# runtime stage uses the same Debian release, so the binary's glibc matches.

FROM debian:bookworm-20250520 AS build

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The list of xtask/src/setup.rs BUILD_PACKAGES (a unit test there keeps the two equal), plus
# ca-certificates for cargo's HTTPS. Versions are not pinned (DL3008): rustc-web and llvm-22
# come from bookworm-security, which keeps only the newest build of each package, so a pinned
# version would stop resolving at the next security update; the dated base image pins the rest.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates \
        rustc-web cargo-web libstd-rust-web-dev-bpf \
        llvm-22-dev libzstd-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

# bpf-linker links the kernel program; it must be built against the LLVM of rustc-web (22).
# Keep the version equal to BPF_LINKER_VERSION in xtask/src/setup.rs (checked by a unit test).
ARG BPF_LINKER_VERSION=0.13.0
RUN LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker \
        --version "${BPF_LINKER_VERSION}" --locked --no-default-features --features llvm-22 \
        --root /usr/local \
    && rm -rf /root/.cargo/registry

WORKDIR /src
COPY . .
# AYAFLOW_BPF_TOOLCHAIN=debian: build the kernel program with rustc-web (ayaflow-build/src/lib.rs).
# The debug info of the release profile is stripped: it is most of the file and the image needs
# none of it (symbols stay, so backtraces keep function names).
RUN --mount=type=cache,target=/root/.cargo/registry \
    --mount=type=cache,target=/src/target \
    AYAFLOW_BPF_TOOLCHAIN=debian cargo build --release --locked --package ayaflow \
    && mkdir -p /out \
    && objcopy --strip-debug target/release/ayaflow /out/ayaflow

# Runtime stage: the binary alone. No CA certificates: the agent opens no outbound connection.
FROM debian:bookworm-20250520-slim

LABEL org.opencontainers.image.title="ayaflow" \
      org.opencontainers.image.description="eBPF network traffic analyzer (TC classifier + agent with a Prometheus/JSON API)" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

COPY --from=build /out/ayaflow /usr/local/bin/ayaflow

# The default db_path (traffic.db) is relative: it lands here. Mount a volume on this folder to
# keep the history across containers. (No ENV AYAFLOW_DB_PATH: the environment would override
# db_path in a config file given with --config.)
WORKDIR /var/lib/ayaflow

EXPOSE 3000

# GET /healthz with bash's /dev/tcp: the slim image has no curl, and the agent's API is plain
# HTTP on 127.0.0.1 (reachable whether it binds :: or 0.0.0.0). It reads AYAFLOW_PORT, so a
# port set with `-e AYAFLOW_PORT=...` is followed; a port set only by --port or a config file
# needs `-e AYAFLOW_PORT` too (or `--no-healthcheck`). integration-test/tests/deploy.rs runs this
# command against a real agent.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${AYAFLOW_PORT:-3000} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

# Root inside the container, but with only the capabilities given at `docker run` (BPF,
# NET_ADMIN, PERFMON; README "Docker" says why each one).
ENTRYPOINT ["/usr/local/bin/ayaflow"]
