//! Query-string parsing that names the bad parameter and what it accepts (a 400, never a panic).

use std::{collections::HashMap, str::FromStr};

use super::error::ApiError;

/// The raw query parameters of one request, consumed one by one so leftovers can be refused.
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn new(map: HashMap<String, String>) -> Params {
        Params(map)
    }

    /// Parses `name` as a number within `min..=max`.
    pub fn number<T>(&mut self, name: &str, min: T, max: T) -> Result<Option<T>, ApiError>
    where
        T: FromStr + PartialOrd + Copy + std::fmt::Display,
    {
        let Some(raw) = self.0.remove(name) else {
            return Ok(None);
        };
        match raw.parse::<T>() {
            Ok(v) if v >= min && v <= max => Ok(Some(v)),
            _ => Err(ApiError::bad_param(
                name,
                &raw,
                &format!("a whole number from {min} to {max}"),
            )),
        }
    }

    /// Parses `name` with `parse`, `expected` describing what it accepts.
    pub fn parsed<T>(
        &mut self,
        name: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ApiError> {
        let Some(raw) = self.0.remove(name) else {
            return Ok(None);
        };
        parse(&raw)
            .map(Some)
            .ok_or_else(|| ApiError::bad_param(name, &raw, expected))
    }

    /// Refuses any parameter not consumed, so a typo is not silently ignored.
    pub fn finish(self, accepted: &str) -> Result<(), ApiError> {
        match self.0.into_iter().next() {
            None => Ok(()),
            Some((k, v)) => Err(ApiError {
                status: axum::http::StatusCode::BAD_REQUEST,
                error: format!("unknown query parameter {k}={v:?}"),
                hint: format!("accepted parameters: {accepted}"),
            }),
        }
    }
}
