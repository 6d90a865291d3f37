//! `[approvals]`: the control socket approvers use, how long a held command waits, and the
//! webhook that announces new requests.
//!
//! Approvals own their section; `config` assembles it into the daemon's file.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// The service's control socket; `exec` runs put `exec-<run id>.sock` beside it.
    #[serde(default = "default_control_socket")]
    pub socket: PathBuf,
    /// Members of this group (and root) may approve; the socket is mode 0660 with this group.
    #[serde(default = "default_approvers_group")]
    pub group: String,
    /// How long a held command waits when its rule sets no `review_timeout_secs`.
    #[serde(
        default = "default_review_timeout",
        deserialize_with = "review_timeout"
    )]
    pub timeout_secs: u64,
    /// POST each new request here (http:// or https://).
    pub webhook: Option<String>,
    /// `json` (the request as JSON) or `slack` (a Slack-compatible `{"text": …}`).
    #[serde(default)]
    pub webhook_format: WebhookFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            socket: default_control_socket(),
            group: default_approvers_group(),
            timeout_secs: default_review_timeout(),
            webhook: None,
            webhook_format: WebhookFormat::default(),
        }
    }
}

fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/interceptor/control.sock")
}
fn default_approvers_group() -> String {
    "interceptor-approvers".to_owned()
}
fn default_review_timeout() -> u64 {
    300
}

fn review_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    crate::toml_file::in_range(
        d,
        "timeout_secs",
        1..=7 * 24 * 3600,
        "0 expires every held command at once; past a week the agent waiting is long gone",
    )
}
