//! `type = "syslog"`: RFC 5424 messages over TCP, octet-counting framing (RFC 6587 §3.4.1),
//! optionally inside TLS (RFC 5425), to rsyslog, syslog-ng or a SIEM's syslog input.
//!
//! Each record is one message: `<PRI>1 TIMESTAMP HOSTNAME interceptor PROCID MSGID - JSON`,
//! with the event's own time, MSGID the OCSF class (`DatastoreActivity`, `NetworkActivity`)
//! and PRI from the configured facility and the record's severity. Octet counting lets a
//! message hold any byte, so statements with newlines arrive whole.
//!
//! Syslog over TCP has no application-level acknowledgement: a batch counts as delivered once
//! it is written and flushed to the socket. To narrow the window in which a receiver that went
//! away swallows a batch, the connection is checked for an orderly close before every batch
//! (a receiver never sends anything, so readable-at-EOF means gone) and re-opened if so.
//! Anything that fails drops the connection; the batch is sent again on a new one.

use std::{
    io::{self, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    sync::Arc,
    time::Duration,
};

use rustls::{pki_types::ServerName, ClientConfig, ClientConnection, StreamOwned};

use super::{config::SyslogSink, Record, Sink, SinkError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct SyslogOut {
    address: String,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    facility: u8,
    /// `HOSTNAME PROCID` fields, fixed for the process.
    hostname: String,
    procid: String,
    conn: Option<Conn>,
    buf: Vec<u8>,
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(bytes).and_then(|()| s.flush()),
            Conn::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()),
        }
    }

    /// The receiver closed its end (or the socket is broken).
    fn closed_by_peer(&self) -> bool {
        let tcp = self.tcp();
        if tcp.set_nonblocking(true).is_err() {
            return true;
        }
        let closed = match tcp.peek(&mut [0u8; 1]) {
            Ok(0) => true,
            // Plain syslog receivers send nothing; over TLS this is a session ticket or an
            // alert, and an alert will fail the next write.
            Ok(_) => false,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        };
        closed || tcp.set_nonblocking(false).is_err()
    }
}

impl SyslogOut {
    /// Prepares the sink; the connection is opened on first use, so a receiver that is down
    /// does not stop the gateway from starting.
    pub fn new(config: &SyslogSink) -> Result<SyslogOut, SinkError> {
        let (host, _) = super::config::split_host_port(&config.address).map_err(|message| {
            SinkError::Connect {
                address: config.address.clone(),
                message,
            }
        })?;
        let tls = match &config.tls {
            None => None,
            Some(t) => {
                // The same verification as a target's `verify-full` upstream leg.
                let upstream = crate::tls::upstream(
                    &crate::tls::UpstreamTlsConfig {
                        mode: crate::tls::UpstreamTlsMode::VerifyFull,
                        ca_file: t.ca_file.clone(),
                        server_name: t.server_name.clone(),
                    },
                    Some(&host),
                )
                .map_err(|e| SinkError::Tls(e.to_string()))?;
                let connector = upstream
                    .connector
                    .ok_or_else(|| SinkError::Tls("no TLS client configuration".to_owned()))?;
                let name = upstream
                    .server_name
                    .ok_or_else(|| SinkError::Tls(format!("no server name for {host:?}")))?;
                Some((connector.config().clone(), name))
            }
        };
        Ok(SyslogOut {
            address: config.address.clone(),
            tls,
            facility: config.facility,
            hostname: hostname(),
            procid: std::process::id().to_string(),
            conn: None,
            buf: Vec::with_capacity(1 << 20),
        })
    }

    fn connect(&self) -> Result<Conn, SinkError> {
        let fail = |message: String| SinkError::Connect {
            address: self.address.clone(),
            message,
        };
        let addrs = self
            .address
            .to_socket_addrs()
            .map_err(|e| fail(e.to_string()))?;
        let mut last = "the name resolved to no address".to_owned();
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    tcp.set_write_timeout(Some(IO_TIMEOUT))
                        .and_then(|()| tcp.set_read_timeout(Some(IO_TIMEOUT)))
                        .map_err(|e| fail(e.to_string()))?;
                    let Some((config, name)) = &self.tls else {
                        return Ok(Conn::Plain(tcp));
                    };
                    let conn = ClientConnection::new(config.clone(), name.clone())
                        .map_err(|e| SinkError::Tls(e.to_string()))?;
                    let mut stream = StreamOwned::new(conn, tcp);
                    // Handshake now, so a certificate problem is reported as one.
                    while stream.conn.is_handshaking() {
                        stream
                            .conn
                            .complete_io(&mut stream.sock)
                            .map_err(|e| SinkError::Tls(format!("{}: {e}", self.address)))?;
                    }
                    return Ok(Conn::Tls(Box::new(stream)));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(fail(last))
    }

    /// One RFC 5424 message, octet-counted, appended to `buf`.
    fn frame(&self, r: &Record, buf: &mut Vec<u8>) {
        let pri = u16::from(self.facility) * 8 + u16::from(syslog_severity(r.summary.severity_id));
        let timestamp = if r.at.is_empty() || r.at.contains(' ') {
            "-"
        } else {
            &r.at
        };
        let header = format!(
            "<{pri}>1 {timestamp} {} interceptor {} {} - ",
            self.hostname,
            self.procid,
            r.summary.msgid()
        );
        let len = header.len() + r.line.len();
        buf.extend_from_slice(len.to_string().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(header.as_bytes());
        buf.extend_from_slice(r.line.as_bytes());
    }
}

impl Sink for SyslogOut {
    fn send(&mut self, records: &[Record]) -> Result<usize, SinkError> {
        if self.conn.as_ref().is_some_and(Conn::closed_by_peer) {
            self.conn = None;
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect()?,
        };
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for r in records {
            self.frame(r, &mut buf);
        }
        let sent = conn.send(&buf);
        self.buf = buf;
        match sent {
            Ok(()) => {
                self.conn = Some(conn);
                Ok(records.len())
            }
            Err(source) => Err(SinkError::Send {
                address: self.address.clone(),
                source,
            }),
        }
    }
}

/// OCSF severity → syslog severity (RFC 5424 §6.2.1).
fn syslog_severity(ocsf: u8) -> u8 {
    match ocsf {
        2 => 5, // Low → notice
        3 => 4, // Medium → warning
        4 => 3, // High → error
        5 => 2, // Critical → critical
        6 => 1, // Fatal → alert
        _ => 6, // Informational, Unknown, Other → informational
    }
}

/// The host's name as RFC 5424 allows it (printable ASCII, no spaces), or `-`.
fn hostname() -> String {
    let name = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if clean.is_empty() {
        "-".to_owned()
    } else {
        clean
    }
}

#[cfg(test)]
pub(crate) fn frame_for_test(facility: u8, r: &Record) -> Vec<u8> {
    let out = SyslogOut {
        address: "127.0.0.1:1".to_owned(),
        tls: None,
        facility,
        hostname: "host".to_owned(),
        procid: "42".to_owned(),
        conn: None,
        buf: Vec::new(),
    };
    let mut buf = Vec::new();
    out.frame(r, &mut buf);
    buf
}
