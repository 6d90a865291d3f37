//! Journals the Unix-socket connects the kernel refused (`capture::unix`).
//!
//! Why this exists: a refusal happens in the kernel, in the caller's `connect()`, and never
//! reaches the proxy. So that the journal still shows who tried to reach which socket, the
//! program reports each refusal in the `UNIX_REFUSALS` ring and this task turns every report
//! into a session row: destination `unix:<path>`, protocol `unix`, decision `deny` by rule
//! `capture.unix`, outcome `refused`. It runs in the gateway's task tracker, so a stopping
//! gateway journals what is still in the ring before the journal is flushed.
//!
//! What it does not do: decide anything. The refusal already happened; a report lost to a full
//! ring (64 KiB, hundreds of refusals between two reads) loses only the journal row.

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use interceptor_common::{ConnRecord, UnixRefusal, AF_UNIX, UNIX_HOOK_SENDMSG};
use tokio::io::{unix::AsyncFd, Interest};

use super::Gateway;
use crate::{
    capture::unix::display_path,
    journal::{NewSession, Outcome},
};

/// Reads the ring until `shutdown`, then once more, journaling every report.
pub async fn journal_refusals(
    gateway: Arc<Gateway>,
    ring: RingBuf<MapData>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // SAFETY: the RingBuf owns its fd and never replaces or closes it while the AsyncFd owns
    // the RingBuf.
    let registered = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
    let mut ring = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot poll the Unix-refusal ring: refusals are enforced but not journaled");
            return;
        }
    };
    loop {
        // Reports are taken inside the select and journaled outside it, so no guard is held
        // across the journal's awaits.
        let (reports, stop) = tokio::select! {
            ready = ring.readable_mut() => match ready {
                Ok(mut guard) => {
                    let reports = take_reports(guard.get_inner_mut());
                    guard.clear_ready();
                    (reports, false)
                }
                Err(_) => (Vec::new(), true),
            },
            _ = shutdown.wait_for(|stop| *stop) => (Vec::new(), true),
        };
        for report in reports {
            journal_one(&gateway, report).await;
        }
        if stop {
            // What the kernel reported before the gateway stopped is journaled too.
            for report in take_reports(ring.get_mut()) {
                journal_one(&gateway, report).await;
            }
            return;
        }
    }
}

fn take_reports(ring: &mut RingBuf<MapData>) -> Vec<UnixRefusal> {
    let mut reports = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<UnixRefusal>() {
            continue;
        }
        // SAFETY: the kernel wrote a whole UnixRefusal (plain integers and byte arrays, any bit
        // pattern valid); the ring gives no alignment guarantee, hence the unaligned read.
        reports.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<UnixRefusal>()) });
    }
    reports
}

async fn journal_one(gateway: &Gateway, report: UnixRefusal) {
    let record = ConnRecord {
        cgroup_id: report.cgroup_id,
        boot_ns: report.boot_ns,
        family: AF_UNIX,
        tgid: report.tgid,
        uid: report.uid,
        gid: report.gid,
        comm: report.comm,
        ..ConnRecord::default()
    };
    let identity = gateway.identities.identify(&record);
    let destination = format!("unix:{}", display_path(&report.path));
    let call = if report.hook == UNIX_HOOK_SENDMSG {
        "sendmsg"
    } else {
        "connect"
    };
    tracing::warn!(pid = report.tgid, uid = report.uid, %destination, call, "Unix socket refused");
    gateway.stats.decided(None, Some("capture.unix"), "deny");
    let session = NewSession {
        run_id: Some(gateway.run_ids.for_cgroup(identity.cgroup_id)),
        identity,
        client_addr: "unix".to_owned(),
        original_dst: destination,
        target: None,
        protocol: "unix".to_owned(),
        upstream: None,
        decision: Some("deny".to_owned()),
        rule: Some("capture.unix".to_owned()),
    };
    match gateway.journal.open_session(session).await {
        Ok(id) => gateway.journal.record_close(
            id,
            0,
            0,
            Outcome::Refused,
            Some(format!(
                "{call}() to a Unix socket [capture.unix] denies: the caller got EPERM"
            )),
        ),
        Err(e) => tracing::error!(error = %e, "could not journal a Unix-socket refusal"),
    }
}
