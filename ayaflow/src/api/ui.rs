//! `GET /` and `GET /ui/<file>`: the web UI, plain HTML, CSS and JavaScript from `ayaflow/ui/`
//! embedded in the binary at build time (no CDN, nothing fetched from anywhere else).
//!
//! The page reads only the public API (`/api/status`, `/api/live`, `WS /api/stream`,
//! `/api/history`), so it shows nothing a script could not read. Every response carries a
//! Content-Security-Policy ([`CSP`]) that lets the page load scripts, styles and images from
//! this origin only and connect nowhere else (`'self'` covers `ws:` to the same host), refuses
//! inline scripts and styles, and forbids framing; plus `nosniff` and no referrer. The assets
//! are revalidated on each load (`no-cache` and an `ETag`), so an upgraded agent never serves a
//! stale script with a new page.
//!
//! The allowlist guards these routes like every other. The bearer token does not
//! (`is_public` in `mod.rs`): a browser cannot send `Authorization` on a page load, and the
//! page and its scripts are the same for everyone and hold no data. With a token set, the page
//! asks for it and sends it on every API request itself (README, "Web UI").

use std::sync::OnceLock;

use axum::{
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::error::ApiError;

/// The policy of every UI response: this origin only, no inline code, no framing.
pub const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                       style-src 'self'; script-src 'self'; frame-ancestors 'none'; \
                       base-uri 'none'; form-action 'none'";

/// One embedded file.
struct Asset {
    /// The name under `/ui/` (`index.html` is also `/`).
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../ui/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the UI. A file in `ayaflow/ui/` not listed here is not served (the unit test
/// below checks that none is forgotten).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("errors.js", JS),
    asset!("main.js", JS),
    asset!("api.js", JS),
    asset!("format.js", JS),
    asset!("chart.js", JS),
    asset!("live.js", JS),
    asset!("table.js", JS),
    asset!("history.js", JS),
];

/// The total size of the embedded UI, bytes.
pub fn total_bytes() -> usize {
    ASSETS.iter().map(|a| a.body.len()).sum()
}

/// Each asset's ETag (a hash of its bytes, computed once), in `ASSETS` order.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                // FNV-1a: a content hash for caching, not a security boundary.
                let h = a.body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
                format!("\"{h:016x}\"")
            })
            .collect()
    })
}

/// `GET /`: the page.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers).unwrap_or_else(|e| e.into_response())
}

/// `GET /ui/<file>`.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers).unwrap_or_else(|e| e.into_response())
}

fn serve(name: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            error: format!("no UI file {name:?}"),
            hint: "the web UI is at /".into(),
        });
    };
    let (asset, etag) = (&ASSETS[i], &etags()[i]);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of `ayaflow/ui/` is served, and nothing else is listed.
    #[test]
    fn every_ui_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("ayaflow/ui exists")
            .map(|e| {
                e.expect("readable")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = ASSETS.iter().map(|a| a.name.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "add the file to ASSETS in api/ui.rs");
    }

    /// The budget: the page and its assets stay within a few hundred KiB.
    #[test]
    fn the_ui_stays_light() {
        assert!(total_bytes() < 200 * 1024, "{} bytes", total_bytes());
    }
}
