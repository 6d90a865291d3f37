//! Types shared by the eBPF programs (`interceptor-ebpf`) and the daemon (`interceptor`).
//!
//! Both sides read and write these through BPF maps, so every type is `#[repr(C)]`, made of
//! `u32`/`u64`/byte arrays only (no `bool`, no hidden padding), and `no_std`. The `user` feature
//! adds `aya::Pod` so the daemon can copy them out of maps.
#![no_std]

/// Names of the maps, as the daemon looks them up in the loaded object and as they are pinned.
pub mod maps {
    /// `Array<CaptureConfig>` with one slot: how the programs behave.
    pub const CONFIG: &str = "CONFIG";
    /// `HashMap<AddrKey, u32>`: destinations to intercept in [`super::MODE_LISTED`].
    pub const INTERCEPT: &str = "INTERCEPT";
    /// `LruHashMap<u64 socket cookie, ConnRecord>`: filled at connect(); read by getpeername().
    pub const CONN_BY_COOKIE: &str = "CONN_BY_COOKIE";
    /// `LruHashMap<AddrKey client tuple, ConnRecord>`: filled by sock_ops once the source port
    /// is known; the proxy looks its peer up here after accept() and deletes the entry.
    pub const CONN_BY_CLIENT: &str = "CONN_BY_CLIENT";
    /// `Array<UnixConfig>` with one slot: how Unix-socket connects are judged.
    pub const UNIX_CONFIG: &str = "UNIX_CONFIG";
    /// `HashMap<UnixPath, u32 verdict>`: exact socket paths (and abstract names) to allow or deny.
    pub const UNIX_PATHS: &str = "UNIX_PATHS";
    /// `HashMap<BasenameKey, u32>`: socket file names to deny wherever they are
    /// (`.s.PGSQL.*`, `docker.sock`, ...).
    pub const UNIX_BASENAMES: &str = "UNIX_BASENAMES";
    /// `RingBuf` of [`super::UnixRefusal`]: one record per refused Unix-socket connect.
    pub const UNIX_REFUSALS: &str = "UNIX_REFUSALS";
    /// `HashMap<UnixPath routed socket, UnixPath gateway listener>`: sockets routed through the
    /// gateway. A `connect()` to the key is rewritten to the value; decided before any rule.
    pub const UNIX_ROUTES: &str = "UNIX_ROUTES";
}

/// Names of the programs in the object file.
pub mod programs {
    pub const CONNECT4: &str = "intercept_connect4";
    pub const CONNECT6: &str = "intercept_connect6";
    pub const SENDMSG4: &str = "filter_sendmsg4";
    pub const SENDMSG6: &str = "filter_sendmsg6";
    pub const GETPEERNAME4: &str = "restore_getpeername4";
    pub const GETPEERNAME6: &str = "restore_getpeername6";
    pub const SOCK_OPS: &str = "record_client_tuple";
    pub const SOCK_CREATE: &str = "deny_raw_sockets";
    pub const SOCK_RELEASE: &str = "forget_socket";
    /// Judges `connect()` on AF_UNIX sockets. The object places it in a `cgroup/connect4`
    /// section only because aya 0.14 knows no Unix attach type: the daemon loads it itself with
    /// `expected_attach_type = BPF_CGROUP_UNIX_CONNECT`, never
    /// through aya's `CgroupSockAddr::load`.
    pub const UNIX_CONNECT: &str = "judge_unix_connect";
    /// The same judgement for `sendmsg()` with an address (unconnected datagram sockets),
    /// loaded with `expected_attach_type = BPF_CGROUP_UNIX_SENDMSG`.
    pub const UNIX_SENDMSG: &str = "judge_unix_sendmsg";
}

/// Kernel functions the Unix-socket program calls. aya 0.14 cannot emit kfunc calls, so the
/// program calls these helper numbers (no helper has them) and the daemon rewrites each such
/// call into a `BPF_PSEUDO_KFUNC_CALL` to the function of that name in the kernel's BTF.
pub mod kfunc_slots {
    /// `struct bpf_sock_addr_kern *bpf_cast_to_kern_ctx(void *ctx)`.
    pub const CAST_TO_KERN_CTX: u32 = 0x7f00_0001;
    /// `int bpf_sock_addr_set_sun_path(struct bpf_sock_addr_kern *sa_kern, const u8 *sun_path,
    /// u32 sun_path__sz)` (Linux 6.7, with the Unix hooks): rewrites the address being connected.
    pub const SET_SUN_PATH: u32 = 0x7f00_0002;
    /// Every slot with its kernel function name.
    pub const ALL: [(u32, &str); 2] = [
        (CAST_TO_KERN_CTX, "bpf_cast_to_kern_ctx"),
        (SET_SUN_PATH, "bpf_sock_addr_set_sun_path"),
    ];
}

/// Intercept every outbound TCP connection of the cgroup (the default for `exec`).
pub const MODE_ALL: u32 = 1;
/// Intercept only destinations listed in the `INTERCEPT` map.
pub const MODE_LISTED: u32 = 2;

/// Capacity of the connection maps. Far above the concurrent connections of an agent host;
/// when a map is full the oldest record is evicted and that connection fails closed.
pub const CONN_MAP_ENTRIES: u32 = 65_536;
pub const INTERCEPT_MAP_ENTRIES: u32 = 4_096;

/// `CONFIG[0]`. All zero (never configured) means "refuse every TCP connect": fail closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureConfig {
    /// [`MODE_ALL`] or [`MODE_LISTED`]; anything else refuses TCP.
    pub mode: u32,
    /// Proxy listener port on 127.0.0.1 (host order). Also used for v4-mapped IPv6.
    pub proxy_port4: u32,
    /// Proxy listener port on [::1] (host order).
    pub proxy_port6: u32,
    /// 1: allow all UDP. 0: allow only DNS (port 53).
    pub udp_allow_all: u32,
}

/// An address as the kernel stores it: four 32-bit words in network byte order, IPv4 as the
/// v4-mapped IPv6 address `::ffff:a.b.c.d`, plus a port in host order.
///
/// Used as the key of `INTERCEPT` (destination; all-zero `ip` means "any address on this port")
/// and of `CONN_BY_CLIENT` (the client's source address and port as the proxy sees it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub ip: [u32; 4],
    pub port: u32,
}

/// Word 2 of a v4-mapped address (`0000:ffff` in network order), as a native-endian u32.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl AddrKey {
    /// `ip4` is in network order, as in `bpf_sock_addr.user_ip4`.
    pub const fn from_v4(ip4: u32, port: u32) -> Self {
        AddrKey {
            ip: [0, 0, V4_MAPPED_WORD, ip4],
            port,
        }
    }

    pub const fn is_v4_mapped(ip: &[u32; 4]) -> bool {
        ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD
    }
}

/// Who connected, and where to, captured in connect4/connect6 (task context, where the pid,
/// uid and cgroup helpers are valid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnRecord {
    pub cgroup_id: u64,
    /// `bpf_ktime_get_boot_ns()` at connect(): lets the daemon reject a reused pid whose process
    /// started after the connection was made.
    pub boot_ns: u64,
    /// Original destination, same encoding as [`AddrKey`].
    pub dst: AddrKey,
    /// Socket family the application used: 2 (AF_INET) or 10 (AF_INET6).
    pub family: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; 16],
    /// Keeps the size a multiple of 8 so there is no implicit tail padding.
    pub reserved: u32,
}

/// Longest `sun_path` (Linux: 108 bytes).
pub const UNIX_PATH_MAX: usize = 108;
/// Distinct lengths of `prefix*` basename patterns the program can check.
pub const UNIX_PREFIX_LENS: usize = 8;
/// Capacity of `UNIX_BASENAMES`.
pub const UNIX_BASENAME_ENTRIES: u32 = 256;
/// Capacity of `UNIX_ROUTES`: one entry per routed socket path.
pub const UNIX_ROUTE_ENTRIES: u32 = 64;

/// FNV-1a (64-bit) over a socket file name, one byte at a time: the program hashes the last
/// path component as it scans the address, the daemon hashes the patterns. A collision can
/// only refuse a socket (basenames only ever deny), never allow one.
pub const BASENAME_HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;
pub const fn basename_hash_step(hash: u64, byte: u8) -> u64 {
    (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
}
pub const fn basename_hash(bytes: &[u8]) -> u64 {
    let mut hash = BASENAME_HASH_SEED;
    let mut i = 0;
    while i < bytes.len() {
        hash = basename_hash_step(hash, bytes[i]);
        i += 1;
    }
    hash
}

/// Verdicts in `UNIX_PATHS` and `UnixConfig::default_verdict`.
pub const UNIX_ALLOW: u32 = 1;
pub const UNIX_DENY: u32 = 2;

/// Which hook refused, in [`UnixRefusal::hook`].
pub const UNIX_HOOK_CONNECT: u32 = 1;
pub const UNIX_HOOK_SENDMSG: u32 = 2;

/// `UNIX_CONFIG[0]`. All zero (never configured) refuses every Unix-socket connect.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnixConfig {
    /// 1 once the daemon has written the maps; anything else refuses.
    pub configured: u32,
    /// [`UNIX_ALLOW`] or [`UNIX_DENY`]: the answer when no path or basename rule matches.
    pub default_verdict: u32,
    /// The lengths of the `prefix*` patterns in `UNIX_BASENAMES` (0: unused slot).
    pub prefix_lens: [u32; UNIX_PREFIX_LENS],
}

/// A socket address as the program normalises it, and the key of `UNIX_PATHS`.
///
/// Filesystem paths end at the first NUL (as the kernel reads them); abstract names
/// (`path[0] == 0`) are the whole address, NULs included. Bytes past `len` are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnixPath {
    pub len: u32,
    pub path: [u8; UNIX_PATH_MAX],
}

impl Default for UnixPath {
    fn default() -> Self {
        UnixPath {
            len: 0,
            path: [0; UNIX_PATH_MAX],
        }
    }
}

/// The key of `UNIX_BASENAMES`: a denied socket file name (`prefix == 0`), or the first `len`
/// bytes of one (`prefix == 1`), by [`basename_hash`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BasenameKey {
    pub hash: u64,
    pub len: u32,
    pub prefix: u32,
}

/// What the program reports for a refused Unix-socket connect (or sendmsg).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixRefusal {
    pub cgroup_id: u64,
    /// `bpf_ktime_get_boot_ns()` at the refusal, for the daemon's pid-reuse check.
    pub boot_ns: u64,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// [`UNIX_HOOK_CONNECT`] or [`UNIX_HOOK_SENDMSG`].
    pub hook: u32,
    pub comm: [u8; 16],
    pub path: UnixPath,
}

pub const AF_UNIX: u32 = 1;
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of them are repr(C), contain only integers and byte arrays, and have no padding.
    unsafe impl aya::Pod for super::CaptureConfig {}
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::ConnRecord {}
    unsafe impl aya::Pod for super::UnixConfig {}
    unsafe impl aya::Pod for super::UnixPath {}
    unsafe impl aya::Pod for super::BasenameKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn basename_hash_is_fnv1a() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(basename_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(basename_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(basename_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shared_types_have_no_padding() {
        assert_eq!(size_of::<CaptureConfig>(), 16);
        assert_eq!(size_of::<AddrKey>(), 20);
        assert_eq!(size_of::<ConnRecord>(), 8 + 8 + 20 + 4 * 4 + 16 + 4);
        assert_eq!(size_of::<UnixConfig>(), 8 + 4 * UNIX_PREFIX_LENS);
        assert_eq!(size_of::<UnixPath>(), 4 + UNIX_PATH_MAX);
        assert_eq!(size_of::<BasenameKey>(), 16);
        assert_eq!(
            size_of::<UnixRefusal>(),
            8 + 8 + 4 * 4 + 16 + 4 + UNIX_PATH_MAX
        );
    }
}
