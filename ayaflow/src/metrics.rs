//! Prometheus metrics, encoded by `prometheus-client` (OpenMetrics text) at scrape time.
//!
//! Every value is read when Prometheus scrapes: the kernel counters straight from the per-CPU
//! map, so `ayaflow_packets_total` and `ayaflow_bytes_total` equal the kernel's counts exactly,
//! and the agent's own counters (connection table, storage, stream) from their atomics. The
//! agent supplies a [`MetricsSource`] that builds the families; this module only encodes them.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Counter or gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; the exposition adds `_total` to the family name.
    Counter,
    Gauge,
}

/// One metric family with its samples.
#[derive(Clone, Debug)]
pub struct Family {
    /// Without the `_total` suffix for counters (the encoder adds it).
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// (labels, value) pairs; a family without labels has one sample with no labels.
    pub samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

impl Family {
    /// A family with a single unlabelled sample.
    pub fn single(name: &'static str, help: &'static str, kind: Kind, value: u64) -> Family {
        Family {
            name,
            help,
            kind,
            samples: vec![(Vec::new(), value)],
        }
    }
}

/// Produces the current families on every scrape.
pub trait MetricsSource: Send + Sync + 'static {
    fn families(&self) -> Vec<Family>;
}

struct SourceCollector(Arc<dyn MetricsSource>);

impl std::fmt::Debug for SourceCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceCollector")
    }
}

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for fam in self.0.families() {
            let ty = match fam.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut desc = encoder.encode_descriptor(fam.name, fam.help, None, ty)?;
            if let [(labels, value)] = fam.samples.as_slice()
                && labels.is_empty()
            {
                match fam.kind {
                    Kind::Counter => ConstCounter::new(*value).encode(desc)?,
                    Kind::Gauge => ConstGauge::new(*value as i64).encode(desc)?,
                }
                continue;
            }
            for (labels, value) in &fam.samples {
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let enc = desc.encode_family(&labels)?;
                match fam.kind {
                    Kind::Counter => ConstCounter::new(*value).encode(enc)?,
                    Kind::Gauge => ConstGauge::new(*value as i64).encode(enc)?,
                }
            }
        }
        Ok(())
    }
}

/// A registry around `source`.
pub fn registry(source: Arc<dyn MetricsSource>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(SourceCollector(source)));
    r
}

/// The exposition text of `registry` (OpenMetrics, served with [`CONTENT_TYPE`]).
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl MetricsSource for Fixed {
        fn families(&self) -> Vec<Family> {
            vec![
                Family {
                    name: "ayaflow_packets",
                    help: "Packets seen.",
                    kind: Kind::Counter,
                    samples: vec![
                        (vec![("direction", "ingress".into())], 7),
                        (vec![("direction", "egress".into())], 3),
                    ],
                },
                Family::single(
                    "ayaflow_active_connections",
                    "Active connections.",
                    Kind::Gauge,
                    2,
                ),
            ]
        }
    }

    #[test]
    fn counters_get_total_and_labels() {
        let text = encode(&registry(Arc::new(Fixed))).unwrap();
        assert!(text.contains("# TYPE ayaflow_packets counter\n"), "{text}");
        assert!(
            text.contains("ayaflow_packets_total{direction=\"ingress\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("ayaflow_packets_total{direction=\"egress\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE ayaflow_active_connections gauge\nayaflow_active_connections 2\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
