//! Reading the daemon's TOML files (the config, policies, policy test cases) with errors that
//! point at the offending line and column.
//!
//! Why this exists apart from `config`: the modules whose config sections `config` assembles
//! (limits, approvals, policies) read and check TOML values too, and they sit below `config`.
//! This module is their shared, lowest layer: it knows TOML and serde, nothing of the daemon.

use serde::Deserialize;

/// Deserializes TOML; on error, the 1-based line and column it points at and what is wrong.
/// Every file the daemon reads (config, policies, policy test cases) reports errors this way.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, (usize, usize, String)> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|span| line_and_column(text, span.start))
            .unwrap_or((1, 1));
        (line, column, e.message().to_owned())
    })
}

/// 1-based line and column of a byte offset, for error messages.
pub fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// Reads an integer that must lie in `range`, for keys where a value outside it would make the
/// gate refuse everything (a zero timeout or limit) or mean nothing (an absurd one). Rejected
/// while deserializing, so the error carries the value's line and column like any parse
/// error; `why` says what the value would do.
pub fn in_range<'de, D, T>(
    deserializer: D,
    key: &str,
    range: impl std::ops::RangeBounds<T>,
    why: &str,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + PartialOrd + std::fmt::Display,
{
    use std::ops::Bound::{Included, Unbounded};
    let value = T::deserialize(deserializer)?;
    if range.contains(&value) {
        return Ok(value);
    }
    let allowed = match (range.start_bound(), range.end_bound()) {
        (Included(lo), Included(hi)) => format!("{lo} to {hi}"),
        (Included(lo), Unbounded) => format!("at least {lo}"),
        (Unbounded, Included(hi)) => format!("at most {hi}"),
        _ => "another value".to_owned(),
    };
    Err(serde::de::Error::custom(format!(
        "{key} = {value} is out of range: give {allowed} ({why})"
    )))
}
