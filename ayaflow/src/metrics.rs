//! Prometheus metrics at scrape time, in the format the scraper asks for.
//!
//! Every value is read when Prometheus scrapes: the kernel counters straight from the per-CPU
//! map, so `ayaflow_packets_total` and `ayaflow_bytes_total` equal the kernel's counts exactly,
//! and the agent's own counters (connection table, storage, stream) from their atomics. The
//! agent supplies a [`MetricsSource`] that returns the current [`Family`] values (the catalogue
//! of names, types and help texts is `crate::telemetry`); this module encodes them. It depends
//! on nothing else in the crate, so every module can report through it.
//!
//! Two exposition formats, chosen per request from the `Accept` header ([`Format::negotiate`]):
//! OpenMetrics 1.0 (encoded by `prometheus-client`), which Prometheus asks for first, and the
//! classic Prometheus text format 0.0.4 for everyone else (`curl`, `promtool check metrics`,
//! older scrapers). Both carry the same samples; they differ in the counters' family names
//! (`ayaflow_packets` vs `ayaflow_packets_total` on the `# HELP`/`# TYPE` lines) and the
//! closing `# EOF`, which only OpenMetrics has. Debian 12's `promtool` (2.42) reads only the
//! classic format and reports the OpenMetrics family names as "no help text".

use std::fmt::Write as _;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

/// The content type of the OpenMetrics output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic Prometheus text output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counter or gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; the exposition adds `_total` to the sample names.
    Counter,
    Gauge,
}

/// One metric family with its samples.
#[derive(Clone, Debug)]
pub struct Family {
    /// Without the `_total` suffix for counters (the encoders add it).
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

/// Fixed families (tests, and the placeholder before the agent's source exists).
impl MetricsSource for Vec<Family> {
    fn families(&self) -> Vec<Family> {
        self.clone()
    }
}

/// An exposition format of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text, ending in `# EOF`; served when the `Accept` header names
    /// `application/openmetrics-text` (Prometheus does, first).
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4. This is the default.
    Text,
}

impl Format {
    /// Picks the format for an `Accept` header (`None`: no header). OpenMetrics if and only if
    /// the header names `application/openmetrics-text` with a quality above 0 and at least as
    /// high as that of `text/plain` (or `text/*`, `*/*`); a bare `*/*` gets the classic text,
    /// as from the Go client library.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(1.0, |(_, v)| v.trim().parse().unwrap_or(0.0));
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The `Content-Type` of this format's output.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Text => TEXT_CONTENT_TYPE,
        }
    }
}

/// The exposition text of `source`'s current families in `format`.
pub fn encode(source: &dyn MetricsSource, format: Format) -> Result<String, std::fmt::Error> {
    let families = source.families();
    match format {
        Format::OpenMetrics => {
            let mut registry = Registry::default();
            registry.register_collector(Box::new(Families(families)));
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry)?;
            Ok(out)
        }
        Format::Text => encode_text(&families),
    }
}

/// One scrape's families, handed to `prometheus-client`'s OpenMetrics encoder.
#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for fam in &self.0 {
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
                    Kind::Gauge => ConstGauge::new(gauge(*value)).encode(desc)?,
                }
                continue;
            }
            for (labels, value) in &fam.samples {
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let enc = desc.encode_family(&labels)?;
                match fam.kind {
                    Kind::Counter => ConstCounter::new(*value).encode(enc)?,
                    Kind::Gauge => ConstGauge::new(gauge(*value)).encode(enc)?,
                }
            }
        }
        Ok(())
    }
}

/// Gauges are signed in prometheus-client; ours never exceed `i64::MAX`, and would saturate
/// rather than wrap negative if they did.
fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The classic text format 0.0.4
/// (<https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format>): a
/// counter's `# HELP`/`# TYPE` name is its sample name, `_total` included.
fn encode_text(families: &[Family]) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    for fam in families {
        let (name, ty) = match fam.kind {
            Kind::Counter => (format!("{}_total", fam.name), "counter"),
            Kind::Gauge => (fam.name.to_string(), "gauge"),
        };
        let help = fam.help.replace('\\', r"\\").replace('\n', r"\n");
        writeln!(out, "# HELP {name} {help}")?;
        writeln!(out, "# TYPE {name} {ty}")?;
        for (labels, value) in &fam.samples {
            out.push_str(&name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    let v = v
                        .replace('\\', r"\\")
                        .replace('"', "\\\"")
                        .replace('\n', r"\n");
                    let sep = if i == 0 { "" } else { "," };
                    write!(out, "{sep}{k}=\"{v}\"")?;
                }
                out.push('}');
            }
            writeln!(out, " {value}")?;
        }
    }
    Ok(out)
}

/// The sum of the samples `selector` selects in a text exposition: `name` alone selects every
/// series of `name`; `name{a="x",b="y"}` those whose labels include these (in any order), so
/// `ayaflow_packets_total{direction="ingress"}` sums every interface. `None` if no series
/// matches. For tests and benchmarks reading `/metrics`.
pub fn sample_sum(text: &str, selector: &str) -> Option<u64> {
    let (name, wanted) = split_sample(selector)?;
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((sample, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((n, labels)) = split_sample(sample) else {
            continue;
        };
        if n == name
            && wanted.iter().all(|w| labels.contains(w))
            && let Ok(v) = value.trim().parse::<u64>()
        {
            *sum.get_or_insert(0) += v;
        }
    }
    sum
}

/// `name{a="x",b="y"}` as its name and its `a="x"` pairs.
fn split_sample(sample: &str) -> Option<(&str, Vec<&str>)> {
    match sample.split_once('{') {
        None => Some((sample.trim(), Vec::new())),
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}')?;
            // Label values here never hold commas (names, reasons, directions).
            Some((name, inner.split(',').filter(|p| !p.is_empty()).collect()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed() -> Vec<Family> {
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

    /// What Prometheus 2.x sends (scrape.go, `scrapeAcceptHeader`).
    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn openmetrics_counters_get_total_and_labels() {
        let text = encode(&fixed(), Format::OpenMetrics).unwrap();
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

    #[test]
    fn text_format_names_counter_families_with_total() {
        let text = encode(&fixed(), Format::Text).unwrap();
        assert_eq!(
            text,
            "# HELP ayaflow_packets_total Packets seen.\n\
             # TYPE ayaflow_packets_total counter\n\
             ayaflow_packets_total{direction=\"ingress\"} 7\n\
             ayaflow_packets_total{direction=\"egress\"} 3\n\
             # HELP ayaflow_active_connections Active connections.\n\
             # TYPE ayaflow_active_connections gauge\n\
             ayaflow_active_connections 2\n"
        );
    }

    #[test]
    fn both_formats_carry_the_same_samples() {
        let samples = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            samples(&encode(&fixed(), Format::OpenMetrics).unwrap()),
            samples(&encode(&fixed(), Format::Text).unwrap())
        );
    }

    #[test]
    fn text_format_escapes_label_values_and_help() {
        let fam = vec![Family {
            name: "x",
            help: "a\\b\nc",
            kind: Kind::Gauge,
            samples: vec![(vec![("l", "q\"u\\o\nte".into())], 1)],
        }];
        assert_eq!(
            encode(&fam, Format::Text).unwrap(),
            "# HELP x a\\\\b\\nc\n# TYPE x gauge\nx{l=\"q\\\"u\\\\o\\nte\"} 1\n"
        );
    }

    #[test]
    fn negotiation() {
        use Format::*;
        for (accept, want) in [
            (None, Text),
            (Some(""), Text),
            (Some("*/*"), Text),
            (Some("text/plain"), Text),
            (Some(PROMETHEUS_ACCEPT), OpenMetrics),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; version=1.0.0"),
                OpenMetrics,
            ),
            (Some("application/openmetrics-text;q=0"), Text),
            (
                Some("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"),
                Text,
            ),
            (
                Some("application/openmetrics-text;q=0.5,*/*;q=0.1"),
                OpenMetrics,
            ),
            (Some("application/json"), Text),
        ] {
            assert_eq!(Format::negotiate(accept), want, "Accept: {accept:?}");
        }
    }
}
