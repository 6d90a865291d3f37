//! `type = "splunk_hec"`: Splunk's HTTP Event Collector.
//!
//! A batch is one `POST {url}/services/collector/event` whose body is the records as HEC
//! event objects, one after another (`{"event": <OCSF>, "time": <epoch s>, "sourcetype":
//! "ocsf", "source": "interceptor"}`), at most [`MAX_BODY`] bytes. Only an HTTP 200 counts as
//! delivered. The token is read from `token_file` for every request (rotation needs no
//! restart) and goes nowhere but the `Authorization` header: it is never logged, journaled or
//! part of an error message.
//!
//! Uses `ureq` (blocking); the shipper calls it from its own thread.

use std::time::Duration;

use super::{config::HecSink, Record, Sink, SinkError};
use crate::secret::SecretSource;

/// Splunk's default `max_content_length` is larger; 1 MiB keeps one retry cheap.
const MAX_BODY: usize = 1 << 20;

pub(crate) struct HecOut {
    endpoint: String,
    token: SecretSource,
    agent: ureq::Agent,
    body: Vec<u8>,
}

impl HecOut {
    /// Builds the client and reads the token once, so a missing token file stops the daemon
    /// at start-up.
    pub fn new(config: &HecSink) -> Result<HecOut, SinkError> {
        let token = SecretSource::File(config.token_file.clone());
        read_token(&token)?;
        let mut builder = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(30)))
            // Statuses are ours to judge: a 503 is worth a retry like a refused connection.
            .http_status_as_error(false);
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| SinkError::Tls(format!("ca_file {}: {e}", ca.display())))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(SinkError::Tls(format!(
                    "ca_file {} holds no certificate",
                    ca.display()
                )));
            }
            builder = builder.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        Ok(HecOut {
            endpoint: format!("{}/services/collector/event", config.url),
            token,
            agent: ureq::Agent::new_with_config(builder.build()),
            body: Vec::with_capacity(MAX_BODY + 4096),
        })
    }
}

/// The token, checked to be usable in a header. Errors name the file, never the contents.
fn read_token(source: &SecretSource) -> Result<String, SinkError> {
    let token = source.read().map_err(SinkError::Token)?;
    let token = token.trim().to_owned();
    if token.is_empty() || token.chars().any(|c| c.is_control()) {
        return Err(SinkError::Token(format!(
            "{source:?} must hold the token alone on one line"
        )));
    }
    Ok(token)
}

/// One HEC event object.
fn append_event(body: &mut Vec<u8>, r: &Record) {
    let ms = r.summary.time_ms.max(0);
    body.extend_from_slice(b"{\"event\":");
    body.extend_from_slice(r.line.as_bytes());
    body.extend_from_slice(
        format!(
            ",\"time\":{}.{:03},\"sourcetype\":\"ocsf\",\"source\":\"interceptor\"}}\n",
            ms / 1000,
            ms % 1000
        )
        .as_bytes(),
    );
}

impl Sink for HecOut {
    fn send(&mut self, records: &[Record]) -> Result<usize, SinkError> {
        let token = read_token(&self.token)?;
        self.body.clear();
        let mut taken = 0;
        for r in records {
            if taken > 0 && self.body.len() + r.line.len() + 128 > MAX_BODY {
                break;
            }
            append_event(&mut self.body, r);
            taken += 1;
        }
        let http = |message: String| SinkError::Http {
            url: self.endpoint.clone(),
            message,
        };
        let mut response = self
            .agent
            .post(&self.endpoint)
            .header("Authorization", &format!("Splunk {token}"))
            .header("Content-Type", "application/json")
            .send(&self.body[..])
            .map_err(|e| http(e.to_string()))?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(taken);
        }
        // Splunk explains refusals in a short JSON body ({"text": "Invalid token", …}).
        let body = response
            .body_mut()
            .with_config()
            .limit(1024)
            .read_to_string()
            .unwrap_or_default();
        Err(SinkError::Rejected {
            url: self.endpoint.clone(),
            status,
            body: body.chars().filter(|c| !c.is_control()).take(300).collect(),
        })
    }
}

#[cfg(test)]
pub(crate) fn body_for_test(records: &[Record]) -> Vec<u8> {
    let mut body = Vec::new();
    for r in records {
        append_event(&mut body, r);
    }
    body
}
