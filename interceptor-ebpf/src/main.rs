//! Kernel side of the capture: cgroup socket hooks attached to the agent's cgroup.
//!
//! Why this exists: the gate must see every outbound TCP connection an agent makes without the
//! agent's cooperation. These programs rewrite the destination of `connect()` to the local proxy,
//! remember who connected and where to, hand that record to the proxy by client tuple, restore
//! the original peer for `getpeername()`, and close the obvious side doors (UDP other than DNS,
//! raw sockets). Every uncertain path answers "deny": a connection that cannot be recorded is
//! refused rather than sent direct.
//!
//! `judge_unix_connect` does the same for Unix-domain sockets, which never reach the TCP hooks:
//! it refuses a captured process's `connect()` (and `sendmsg()` with an address) to sockets of
//! databases and container runtimes, judged by path, and rewrites a `connect()` to a routed
//! socket into one to the gateway's listener for it. It needs Linux 6.7+ and is loaded by the
//! daemon itself (`capture::unix`), because aya 0.14 has no Unix attach type.
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
    maps::{Array, HashMap, LruHashMap, RingBuf},
    programs::{SockAddrContext, SockContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use interceptor_common::{
    basename_hash_step, kfunc_slots, AddrKey, BasenameKey, CaptureConfig, ConnRecord, UnixConfig,
    UnixPath, UnixRefusal, AF_INET, AF_INET6, BASENAME_HASH_SEED, CONN_MAP_ENTRIES,
    INTERCEPT_MAP_ENTRIES, MODE_ALL, MODE_LISTED, UNIX_ALLOW, UNIX_BASENAME_ENTRIES, UNIX_DENY,
    UNIX_HOOK_CONNECT, UNIX_HOOK_SENDMSG, UNIX_PATH_MAX, UNIX_PREFIX_LENS, UNIX_ROUTE_ENTRIES,
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

#[map(name = "UNIX_CONFIG")]
static UNIX_CONFIG: Array<UnixConfig> = Array::with_max_entries(1, 0);

#[map(name = "UNIX_PATHS")]
static UNIX_PATHS: HashMap<UnixPath, u32> = HashMap::with_max_entries(1_024, 0);

/// Routed socket path -> the gateway's listener for it (`capture::unix`, `gateway::unix_routes`).
#[map(name = "UNIX_ROUTES")]
static UNIX_ROUTES: HashMap<UnixPath, UnixPath> = HashMap::with_max_entries(UNIX_ROUTE_ENTRIES, 0);

#[map(name = "UNIX_BASENAMES")]
static UNIX_BASENAMES: HashMap<BasenameKey, u32> =
    HashMap::with_max_entries(UNIX_BASENAME_ENTRIES, 0);

/// 64 KiB: about 400 refusals between two reads by the daemon; beyond that they are dropped
/// from the report (never allowed).
#[map(name = "UNIX_REFUSALS")]
static UNIX_REFUSALS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

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

/// The first fields of the kernel's `struct bpf_sock_addr_kern` (include/linux/filter.h),
/// which `bpf_cast_to_kern_ctx` returns. The verifier checks every load below against the
/// running kernel's BTF, so a kernel with another layout refuses to load the program rather
/// than let it read the wrong field.
#[repr(C)]
struct SockAddrKern {
    sk: u64,
    uaddr: u64,
    tmp_reg: u64,
    t_ctx: u64,
    uaddrlen: u32,
}

/// `offsetof(struct sockaddr_un, sun_path)`.
const SUN_PATH_OFFSET: u64 = 2;

/// `bpf_cast_to_kern_ctx`, reached through a slot the daemon rewrites into a kfunc call.
fn kern_ctx(sa: *mut bpf_sock_addr) -> *const SockAddrKern {
    // SAFETY: no helper has this number; the daemon patches the call before loading, and never
    // loads the program unpatched. The kfunc takes the context pointer and returns it typed.
    unsafe {
        let cast: unsafe extern "C" fn(*mut bpf_sock_addr) -> *const SockAddrKern =
            core::mem::transmute(kfunc_slots::CAST_TO_KERN_CTX as usize);
        cast(sa)
    }
}

/// The address the caller passed, normalised as [`UnixPath`] describes.
fn unix_destination(sa: *mut bpf_sock_addr) -> Result<UnixPath, Refused> {
    let kern = kern_ctx(sa);
    // SAFETY: `kern` is the verifier-typed kernel context; loads are checked against BTF.
    let (uaddr, addrlen) = unsafe {
        (
            core::ptr::read_volatile(&(*kern).uaddr),
            core::ptr::read_volatile(&(*kern).uaddrlen),
        )
    };
    let mut dst = UnixPath::default();
    // SAFETY: a fault makes the helper fail, which refuses. The kernel's copy of the address is
    // a sockaddr_storage (128 bytes), so the 108 bytes after the family are in bounds.
    unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel_buf(
            (uaddr + SUN_PATH_OFFSET) as *const u8,
            &mut dst.path,
        )
    }
    .map_err(|_| Refused)?;
    let given = (addrlen as u64).saturating_sub(SUN_PATH_OFFSET) as usize;
    let abstract_name = dst.path[0] == 0;
    // One pass, and no branch on a position computed from the data: the verifier then sees
    // one state per byte position instead of one per possible path length.
    let mut ended = false;
    let mut len = 0u32;
    for i in 0..UNIX_PATH_MAX {
        // A filesystem path ends at its first NUL, however long the address was; an abstract
        // name is the whole address.
        if ended || i >= given || (!abstract_name && dst.path[i] == 0) {
            ended = true;
            dst.path[i] = 0;
        } else {
            len = i as u32 + 1;
        }
    }
    dst.len = len;
    Ok(dst)
}

/// Whether the file name of `dst` (after its last `/`) is denied by `UNIX_BASENAMES`, whole
/// or by one of the prefix lengths in `cfg`.
///
/// One pass over the address hashes the current path component and remembers its hash at each
/// configured prefix length; a `/` starts over. Nothing here indexes memory or decides a branch
/// by a value computed from the address, which keeps the verifier's work linear in its length.
fn basename_denied(dst: &UnixPath, cfg: &UnixConfig) -> bool {
    if dst.path[0] == 0 {
        return false; // an abstract name is not a file: it has no file name to match
    }
    let mut hash = BASENAME_HASH_SEED;
    let mut len = 0u32;
    // 0: this prefix length was not reached in the last component (0 is never a key).
    let mut prefix_hash = [0u64; UNIX_PREFIX_LENS];
    for i in 0..UNIX_PATH_MAX {
        // Past the end of a filesystem path every byte is zero (see `unix_destination`).
        let byte = dst.path[i];
        if byte == 0 {
            break;
        }
        if byte == b'/' {
            hash = BASENAME_HASH_SEED;
            len = 0;
            prefix_hash = [0; UNIX_PREFIX_LENS];
            continue;
        }
        hash = basename_hash_step(hash, byte);
        len += 1;
        for k in 0..UNIX_PREFIX_LENS {
            if cfg.prefix_lens[k] == len {
                prefix_hash[k] = hash;
            }
        }
    }
    let denied = |key: BasenameKey| {
        // SAFETY: the value is a plain u32; only presence matters.
        unsafe { UNIX_BASENAMES.get(&key) }.is_some()
    };
    if denied(BasenameKey {
        hash,
        len,
        prefix: 0,
    }) {
        return true;
    }
    // Every slot is looked up, reached or not: a hash of 0 or a length of 0 is never a key
    // (the daemon makes sure), and not branching on the hashes keeps them out of the
    // verifier's precision tracking, which would otherwise multiply its states.
    let mut any = false;
    for k in 0..UNIX_PREFIX_LENS {
        any |= denied(BasenameKey {
            hash: prefix_hash[k],
            len: cfg.prefix_lens[k],
            prefix: 1,
        });
    }
    any
}

/// `UNIX_CONFIG[0]` once the daemon has finished writing the rules; `None` refuses.
fn unix_config() -> Option<UnixConfig> {
    UNIX_CONFIG.get(0).copied().filter(|c| c.configured == 1)
}

/// Exact paths decide first (allow or deny), then the denied basenames, then the default.
fn unix_verdict(dst: &UnixPath, cfg: &UnixConfig) -> u32 {
    // SAFETY: the value is a plain u32, copied out at once.
    if let Some(verdict) = unsafe { UNIX_PATHS.get(dst) }.copied() {
        return verdict;
    }
    if basename_denied(dst, cfg) {
        return UNIX_DENY;
    }
    cfg.default_verdict
}

/// Rewrites the address being connected to `listener` with the kfunc
/// `bpf_sock_addr_set_sun_path`, reached through a slot the daemon rewrites into a kfunc call.
///
/// The path goes with its exact length, no padding: a kernel may refuse a new address longer
/// than the one the caller passed (a check proposed upstream in 2025), and the shorter the
/// better. The verifier checks the `__sz` pair against the map value the pointer is in, so the
/// length is bounded first (1..=UNIX_PATH_MAX; the daemon never writes anything else).
fn route_to(sa: *mut bpf_sock_addr, listener: *const UnixPath) -> Result<(), Refused> {
    // SAFETY: `listener` points into a map value the caller has checked for NULL.
    let len = unsafe { (*listener).len };
    if len == 0 || len > UNIX_PATH_MAX as u32 {
        return Err(Refused);
    }
    let kern = kern_ctx(sa);
    // SAFETY: as in `kern_ctx`; the kfunc reads `len` bytes of the value's `path`, which the
    // bound above keeps inside it.
    let ret = unsafe {
        let set: unsafe extern "C" fn(*const SockAddrKern, *const u8, u32) -> i32 =
            core::mem::transmute(kfunc_slots::SET_SUN_PATH as usize);
        set(kern, (*listener).path.as_ptr(), len)
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(Refused)
    }
}

/// Reports a refusal for the daemon's journal; a full ring only loses the report.
fn report_unix_refusal(dst: &UnixPath, hook: u32) {
    let Some(mut entry) = UNIX_REFUSALS.reserve::<UnixRefusal>(0) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    entry.write(UnixRefusal {
        // SAFETY: plain helper without pointer arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        // SAFETY: as above.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        hook,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        path: *dst,
    });
    entry.submit(0);
}

/// Routes decide first: routing a path is the operator's explicit choice, so it wins over a
/// deny of the same path or file name. Then [`unix_verdict`].
fn judge_unix(sa: *mut bpf_sock_addr, hook: u32) -> i32 {
    // Anything unreadable or unconfigured refuses: fail closed.
    let Ok(dst) = unix_destination(sa) else {
        return DENY;
    };
    let allowed = match unix_config() {
        None => false,
        Some(cfg) => match UNIX_ROUTES.get_ptr(&dst) {
            // Only a connect is routed: the gateway listens for streams, and a datagram sent to
            // a routed path would otherwise reach the socket the route exists to keep agents
            // from.
            Some(listener) => hook == UNIX_HOOK_CONNECT && route_to(sa, listener).is_ok(),
            None => unix_verdict(&dst, &cfg) == UNIX_ALLOW,
        },
    };
    if allowed {
        ALLOW
    } else {
        report_unix_refusal(&dst, hook);
        DENY
    }
}

/// `connect()` on an AF_UNIX socket (stream, seqpacket or datagram). The section says
/// connect4 only because aya 0.14 parses no Unix section: the daemon loads this program with
/// `expected_attach_type = BPF_CGROUP_UNIX_CONNECT` (see `capture::unix`).
#[cgroup_sock_addr(connect4)]
pub fn judge_unix_connect(ctx: SockAddrContext) -> i32 {
    judge_unix(ctx.sock_addr, UNIX_HOOK_CONNECT)
}

/// `sendmsg()` with an address on an unconnected AF_UNIX datagram socket, which never passes
/// connect. Loaded with `expected_attach_type = BPF_CGROUP_UNIX_SENDMSG`.
#[cgroup_sock_addr(sendmsg4)]
pub fn judge_unix_sendmsg(ctx: SockAddrContext) -> i32 {
    judge_unix(ctx.sock_addr, UNIX_HOOK_SENDMSG)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
