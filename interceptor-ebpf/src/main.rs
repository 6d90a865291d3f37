//! Kernel side of the capture: cgroup socket hooks attached to the agent's cgroup.
//!
//! Why this exists: the gate must see every outbound TCP connection an agent makes without the
//! agent's cooperation. These programs rewrite the destination of `connect()` to the local proxy,
//! remember who connected and where to, hand that record to the proxy by client tuple, restore
//! the original peer for `getpeername()`, and close the obvious side doors (UDP other than DNS,
//! raw sockets). Every uncertain path answers "deny": a connection that cannot be recorded is
//! refused rather than sent direct.
//!
//! The daemon (`interceptor/src/capture`) loads this object, fills `CONFIG`, and reads
//! `CONN_BY_CLIENT`. Map and program names live in `interceptor-common`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{bpf_sock_addr, BPF_SOCK_OPS_TCP_CONNECT_CB},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LruHashMap},
    programs::{SockAddrContext, SockContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use interceptor_common::{
    AddrKey, CaptureConfig, ConnRecord, AF_INET, AF_INET6, CONN_MAP_ENTRIES, INTERCEPT_MAP_ENTRIES,
    MODE_ALL, MODE_LISTED,
};

/// Return codes of cgroup sock/sock_addr programs.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const IPPROTO_TCP: u32 = 6;
const DNS_PORT: u16 = 53;

/// 127.0.0.1 and ::1 as the kernel stores them (network order words).
const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
const LOOPBACK6_LAST: u32 = u32::from_ne_bytes([0, 0, 0, 1]);

#[map(name = "CONFIG")]
static CONFIG: Array<CaptureConfig> = Array::with_max_entries(1, 0);

#[map(name = "INTERCEPT")]
static INTERCEPT: HashMap<AddrKey, u32> = HashMap::with_max_entries(INTERCEPT_MAP_ENTRIES, 0);

#[map(name = "CONN_BY_COOKIE")]
static CONN_BY_COOKIE: LruHashMap<u64, ConnRecord> =
    LruHashMap::with_max_entries(CONN_MAP_ENTRIES, 0);

#[map(name = "CONN_BY_CLIENT")]
static CONN_BY_CLIENT: LruHashMap<AddrKey, ConnRecord> =
    LruHashMap::with_max_entries(CONN_MAP_ENTRIES, 0);

/// Why a connect was refused; only used for the log line.
struct Refused;

fn config() -> Option<CaptureConfig> {
    CONFIG.get(0).copied()
}

fn udp_allowed(port: u16) -> bool {
    port == DNS_PORT || config().is_some_and(|c| c.udp_allow_all == 1)
}

fn should_intercept(cfg: &CaptureConfig, dst: &AddrKey) -> Result<bool, Refused> {
    match cfg.mode {
        MODE_ALL => Ok(true),
        MODE_LISTED => {
            let any_addr = AddrKey {
                ip: [0; 4],
                port: dst.port,
            };
            // SAFETY: the values are plain u32 flags; we only test for presence.
            let listed =
                unsafe { INTERCEPT.get(dst).is_some() || INTERCEPT.get(&any_addr).is_some() };
            Ok(listed)
        }
        // Never configured (all zero) or garbage: refuse rather than let traffic out unseen.
        _ => Err(Refused),
    }
}

/// Captures the caller's identity. Must run in connect(): only there is "current" the caller.
fn record_for(dst: AddrKey, family: u32) -> ConnRecord {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    ConnRecord {
        // SAFETY: plain helpers without pointer arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        dst,
        family,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        reserved: 0,
    }
}

fn remember(ctx: &SockAddrContext, record: &ConnRecord) -> Result<(), Refused> {
    // SAFETY: the context pointer is valid for the whole program run.
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.as_ptr()) };
    CONN_BY_COOKIE
        .insert(&cookie, record, 0)
        .map_err(|_| Refused)
}

fn read_user_ip6(sa: *const bpf_sock_addr) -> [u32; 4] {
    // The verifier only accepts 4-byte loads of user_ip6: read it word by word.
    // SAFETY: `sa` is the program's context pointer.
    unsafe {
        [
            core::ptr::read_volatile(&(*sa).user_ip6[0]),
            core::ptr::read_volatile(&(*sa).user_ip6[1]),
            core::ptr::read_volatile(&(*sa).user_ip6[2]),
            core::ptr::read_volatile(&(*sa).user_ip6[3]),
        ]
    }
}

fn write_user_ip6(sa: *mut bpf_sock_addr, ip: [u32; 4]) {
    // SAFETY: `sa` is the program's context pointer; user_ip6 is writable in these hooks.
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip6[0], ip[0]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[1], ip[1]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[2], ip[2]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[3], ip[3]);
    }
}

/// `user_port` holds a network-order 16-bit port in a u32.
fn user_port(sa: *const bpf_sock_addr) -> u16 {
    // SAFETY: context pointer.
    u16::from_be(unsafe { (*sa).user_port } as u16)
}

fn set_user_port(sa: *mut bpf_sock_addr, port: u32) {
    // SAFETY: context pointer.
    unsafe { (*sa).user_port = u32::from((port as u16).to_be()) }
}

/// Common prologue of connect4/connect6: UDP and non-TCP stream sockets are decided here.
/// Returns `None` when the socket is a TCP socket that needs the interception decision.
fn non_tcp_verdict(sa: *const bpf_sock_addr) -> Option<i32> {
    // SAFETY: context pointer.
    let (ty, proto) = unsafe { ((*sa).type_, (*sa).protocol) };
    match ty {
        SOCK_STREAM if proto == IPPROTO_TCP => None,
        // SCTP or MPTCP stream sockets would bypass the TCP hooks further down: refuse them.
        SOCK_STREAM => Some(DENY),
        SOCK_DGRAM if udp_allowed(user_port(sa)) => Some(ALLOW),
        SOCK_DGRAM => Some(DENY),
        _ => Some(ALLOW),
    }
}

#[cgroup_sock_addr(connect4)]
pub fn intercept_connect4(ctx: SockAddrContext) -> i32 {
    if let Some(verdict) = non_tcp_verdict(ctx.sock_addr) {
        return verdict;
    }
    match try_connect4(&ctx) {
        Ok(verdict) => verdict,
        Err(Refused) => {
            warn!(
                &ctx,
                "interceptor: refused a TCP connect4 that could not be recorded"
            );
            DENY
        }
    }
}

fn try_connect4(ctx: &SockAddrContext) -> Result<i32, Refused> {
    let sa = ctx.sock_addr;
    let cfg = config().ok_or(Refused)?;
    // SAFETY: context pointer.
    let dst = AddrKey::from_v4(unsafe { (*sa).user_ip4 }, u32::from(user_port(sa)));
    if !should_intercept(&cfg, &dst)? {
        return Ok(ALLOW);
    }
    if cfg.proxy_port4 == 0 {
        return Err(Refused);
    }
    remember(ctx, &record_for(dst, AF_INET))?;
    // SAFETY: context pointer; user_ip4 is writable in connect4.
    unsafe { (*sa).user_ip4 = LOOPBACK4 };
    set_user_port(sa, cfg.proxy_port4);
    Ok(ALLOW)
}

#[cgroup_sock_addr(connect6)]
pub fn intercept_connect6(ctx: SockAddrContext) -> i32 {
    if let Some(verdict) = non_tcp_verdict(ctx.sock_addr) {
        return verdict;
    }
    match try_connect6(&ctx) {
        Ok(verdict) => verdict,
        Err(Refused) => {
            warn!(
                &ctx,
                "interceptor: refused a TCP connect6 that could not be recorded"
            );
            DENY
        }
    }
}

fn try_connect6(ctx: &SockAddrContext) -> Result<i32, Refused> {
    let sa = ctx.sock_addr;
    let cfg = config().ok_or(Refused)?;
    let dst = AddrKey {
        ip: read_user_ip6(sa),
        port: u32::from(user_port(sa)),
    };
    if !should_intercept(&cfg, &dst)? {
        return Ok(ALLOW);
    }
    // A dual-stack socket dialing ::ffff:a.b.c.d really makes an IPv4 connection: send it to
    // the IPv4 listener through the v4-mapped loopback address.
    let (proxy_ip, proxy_port) = if AddrKey::is_v4_mapped(&dst.ip) {
        (AddrKey::from_v4(LOOPBACK4, 0).ip, cfg.proxy_port4)
    } else {
        ([0, 0, 0, LOOPBACK6_LAST], cfg.proxy_port6)
    };
    if proxy_port == 0 {
        return Err(Refused);
    }
    remember(ctx, &record_for(dst, AF_INET6))?;
    write_user_ip6(sa, proxy_ip);
    set_user_port(sa, proxy_port);
    Ok(ALLOW)
}

/// Unconnected UDP (`sendto`) never passes connect4/6: filter it here the same way.
#[cgroup_sock_addr(sendmsg4)]
pub fn filter_sendmsg4(ctx: SockAddrContext) -> i32 {
    if udp_allowed(user_port(ctx.sock_addr)) {
        ALLOW
    } else {
        DENY
    }
}

#[cgroup_sock_addr(sendmsg6)]
pub fn filter_sendmsg6(ctx: SockAddrContext) -> i32 {
    if udp_allowed(user_port(ctx.sock_addr)) {
        ALLOW
    } else {
        DENY
    }
}

fn recorded_peer(ctx: &SockAddrContext) -> Option<ConnRecord> {
    // SAFETY: context pointer; the map value is copied out immediately.
    unsafe {
        let cookie = aya_ebpf::helpers::bpf_get_socket_cookie(ctx.as_ptr());
        CONN_BY_COOKIE.get(&cookie).copied()
    }
}

/// The application asked who its peer is: answer with what it dialed, not with the proxy.
#[cgroup_sock_addr(getpeername4)]
pub fn restore_getpeername4(ctx: SockAddrContext) -> i32 {
    if let Some(rec) = recorded_peer(&ctx) {
        let sa = ctx.sock_addr;
        // SAFETY: context pointer.
        unsafe { (*sa).user_ip4 = rec.dst.ip[3] };
        set_user_port(sa, rec.dst.port);
    }
    // getpeername hooks must return 1; they cannot refuse.
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn restore_getpeername6(ctx: SockAddrContext) -> i32 {
    if let Some(rec) = recorded_peer(&ctx) {
        write_user_ip6(ctx.sock_addr, rec.dst.ip);
        set_user_port(ctx.sock_addr, rec.dst.port);
    }
    ALLOW
}

/// At TCP_CONNECT_CB the source port is assigned and the SYN not yet sent: publish the record
/// under the client tuple, which is all the proxy knows after accept().
#[sock_ops]
pub fn record_client_tuple(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 1;
    }
    // SAFETY: context pointer; the value is copied out immediately.
    let record = unsafe {
        let cookie = aya_ebpf::helpers::bpf_get_socket_cookie(ctx.as_ptr());
        CONN_BY_COOKIE.get(&cookie).copied()
    };
    let Some(record) = record else {
        return 1; // not an intercepted connection
    };
    let family = ctx.family();
    let remote6 = sock_ops_remote_ip6(&ctx);
    let key = if family == AF_INET || (family == AF_INET6 && AddrKey::is_v4_mapped(&remote6)) {
        AddrKey::from_v4(ctx.local_ip4(), ctx.local_port())
    } else {
        AddrKey {
            ip: sock_ops_local_ip6(&ctx),
            port: ctx.local_port(),
        }
    };
    // If this insert fails the proxy finds no record and closes the connection: fail closed.
    let _ = CONN_BY_CLIENT.insert(&key, &record, 0);
    1
}

// The verifier rejects loads through a ctx pointer with an added offset, which is what copying
// the whole array compiles to: read each word at its own constant offset.
fn sock_ops_local_ip6(ctx: &SockOpsContext) -> [u32; 4] {
    // SAFETY: context pointer.
    unsafe {
        [
            core::ptr::read_volatile(&(*ctx.ops).local_ip6[0]),
            core::ptr::read_volatile(&(*ctx.ops).local_ip6[1]),
            core::ptr::read_volatile(&(*ctx.ops).local_ip6[2]),
            core::ptr::read_volatile(&(*ctx.ops).local_ip6[3]),
        ]
    }
}

fn sock_ops_remote_ip6(ctx: &SockOpsContext) -> [u32; 4] {
    // SAFETY: context pointer.
    unsafe {
        [
            core::ptr::read_volatile(&(*ctx.ops).remote_ip6[0]),
            core::ptr::read_volatile(&(*ctx.ops).remote_ip6[1]),
            core::ptr::read_volatile(&(*ctx.ops).remote_ip6[2]),
            core::ptr::read_volatile(&(*ctx.ops).remote_ip6[3]),
        ]
    }
}

/// Raw sockets would let the agent craft packets that no connect() hook ever sees.
#[cgroup_sock(sock_create)]
pub fn deny_raw_sockets(ctx: SockContext) -> i32 {
    // SAFETY: context pointer.
    let ty = unsafe { (*ctx.sock).type_ };
    if ty == SOCK_RAW {
        warn!(&ctx, "interceptor: refused a raw socket");
        DENY
    } else {
        ALLOW
    }
}

/// Drops the connect-time record when the socket goes away, so the LRU holds live sockets.
#[cgroup_sock(sock_release)]
pub fn forget_socket(ctx: SockContext) -> i32 {
    // SAFETY: context pointer.
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = CONN_BY_COOKIE.remove(&cookie);
    ALLOW
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
