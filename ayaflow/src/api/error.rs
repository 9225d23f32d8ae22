//! `ApiError`: a status code and a JSON body `{"error": ..., "hint": ...}` that says what to do.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

/// A request the API refuses or could not serve.
#[derive(Debug)]
pub struct ApiError {
    /// The response's status code.
    pub status: StatusCode,
    /// What went wrong, with the offending value.
    pub error: String,
    /// What to do about it (what a parameter accepts, which option to change).
    pub hint: String,
}

impl ApiError {
    /// 400 for query parameter `name`: `error` says what is wrong, `hint` what is accepted.
    pub fn bad_param(name: &str, value: &str, expected: &str) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: format!("invalid query parameter {name}={value:?}"),
            hint: format!("{name} must be {expected}"),
        }
    }

    /// 403 for a peer outside `allowed_ips`, named as IPv4 if it is IPv4-mapped.
    pub fn forbidden(peer: std::net::IpAddr) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            error: format!("{} is not in allowed_ips", peer.to_canonical()),
            hint: "add this address or its network to allowed_ips (--allowed-ips, AYAFLOW_ALLOWED_IPS) to reach the API".into(),
        }
    }

    /// 401 for a request without the API token (or with another one).
    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            error: "missing or wrong API token".into(),
            hint:
                "send the token of the agent's --api-token-file as `Authorization: Bearer <token>`"
                    .into(),
        }
    }

    /// 503 when a bounded resource is exhausted or not ready.
    pub fn unavailable(error: impl Into<String>, hint: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: error.into(),
            hint: hint.into(),
        }
    }

    /// A 500. The cause (which may name files and paths of the node) goes to the log only; the
    /// client gets a request id to find it there.
    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        static REQUESTS: AtomicU64 = AtomicU64::new(0);
        let id = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(request = id, "API request failed: {error}");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: format!("internal error (request {id})"),
            hint: format!("the agent's log says what failed: look for request={id}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": self.error, "hint": self.hint})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: a 401 names the scheme it wants.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
