//! Shipping journal events to SIEMs (placeholder; filled in by the shipping work).

use serde::Deserialize;

/// One `[[sink]]` of the configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct SinkConfig {
    pub name: String,
    #[serde(flatten)]
    pub settings: toml::Table,
}
