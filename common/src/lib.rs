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

pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all three are repr(C), contain only integers and byte arrays, and have no padding.
    unsafe impl aya::Pod for super::CaptureConfig {}
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::ConnRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn shared_types_have_no_padding() {
        assert_eq!(size_of::<CaptureConfig>(), 16);
        assert_eq!(size_of::<AddrKey>(), 20);
        assert_eq!(size_of::<ConnRecord>(), 8 + 8 + 20 + 4 * 4 + 16 + 4);
    }
}
