//! Loading the embedded eBPF object, attaching it to capture cgroups, and the maps it shares
//! with the proxy.
//!
//! Two lifetimes:
//! - `exec`: links are owned by this process. When the run ends (or the process dies), the
//!   kernel detaches them together with the run's cgroup.
//! - `run` (service): links and maps are pinned in bpffs, so they outlive the daemon. While it is
//!   down, captured connections are still rewritten to the proxy port, where nothing listens:
//!   they are refused, never sent direct. A restarted daemon adopts the pins.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    maps::{Array, HashMap, Map, MapData, RingBuf},
    programs::{links::FdLink, CgroupAttachMode},
    Ebpf,
};
use interceptor_common::{
    self as common, AddrKey, BasenameKey, CaptureConfig, ConnRecord, UnixConfig, UnixPath,
};

use super::{
    cgroup::Cgroup,
    unix::{filesystem_path, Unavailable, UnixPrograms, UnixRules},
    CaptureError, ConnectionLookup,
};
use super::{CaptureConfig as CaptureSection, CaptureMode, UdpPolicy};
use crate::target::{normalize, DestPattern, Target};

/// The object built by `interceptor/build.rs`; the daemon needs no toolchain at run time.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interceptor-ebpf"));

/// Every program, in attach order. The record-keeping programs go first so that by the time
/// connect4/6 start redirecting, sock_ops is there to publish the record.
const PROGRAMS: [&str; 9] = [
    common::programs::SOCK_OPS,
    common::programs::SOCK_RELEASE,
    common::programs::GETPEERNAME4,
    common::programs::GETPEERNAME6,
    common::programs::SOCK_CREATE,
    common::programs::SENDMSG4,
    common::programs::SENDMSG6,
    common::programs::CONNECT4,
    common::programs::CONNECT6,
];

/// What the programs should do, written to the CONFIG and INTERCEPT maps.
#[derive(Debug, Clone)]
pub struct Settings {
    pub intercept_all: bool,
    pub intercept: Vec<DestPattern>,
    pub udp_allow_all: bool,
    pub proxy_port4: u16,
    pub proxy_port6: u16,
    /// Unix-socket rules (`[capture.unix]`).
    pub unix: UnixRules,
    /// Routed Unix sockets: (the path agents connect to, the gateway's listener for it).
    pub unix_routes: Vec<(UnixPath, UnixPath)>,
}

/// Where the programs steer captured connections: the gateway's listeners, as plain values
/// (the gateway builds it, `gateway::Listeners::steering`; capture sits below the gateway).
#[derive(Debug, Clone, Default)]
pub struct Steering {
    /// The proxy's port on 127.0.0.1 and on [::1] (0 when there is no IPv6 listener).
    pub port4: u16,
    pub port6: u16,
    /// Routed Unix sockets: (the path agents connect to, the gateway's listener for it).
    pub unix_routes: Vec<(String, std::path::PathBuf)>,
}

impl Settings {
    /// The programs' settings for `[capture]` and the targets, steering into the gateway's
    /// listeners (`steering`). `default_mode` applies when the config does not choose (`all`
    /// for both `exec` and `run` today).
    pub fn from_config(
        capture: &CaptureSection,
        targets: &[Target],
        default_mode: CaptureMode,
        steering: &Steering,
    ) -> Result<Settings, String> {
        Ok(Settings {
            intercept_all: capture.mode.unwrap_or(default_mode) == CaptureMode::All,
            // A target's real address is captured like the ones agents are meant to dial: a
            // connection straight to it is judged as that target, never relayed raw.
            intercept: targets
                .iter()
                .flat_map(|t| {
                    t.intercept
                        .iter()
                        .copied()
                        .chain(t.upstream.map(|u| DestPattern::Exact(normalize(u))))
                })
                .chain(capture.extra_intercepts()?)
                .collect(),
            udp_allow_all: capture.udp == UdpPolicy::Allow,
            proxy_port4: steering.port4,
            proxy_port6: steering.port6,
            unix: capture.unix.rules()?,
            unix_routes: steering
                .unix_routes
                .iter()
                .map(|(routed, listener)| {
                    let listener = listener
                        .to_str()
                        .ok_or_else(|| format!("{}: not UTF-8", listener.display()))?;
                    Ok((
                        filesystem_path(routed)?,
                        filesystem_path(listener).map_err(|e| format!("the route listener {e}"))?,
                    ))
                })
                .collect::<Result<_, String>>()?,
        })
    }
}

/// Loaded (or adopted) programs and the maps the proxy uses.
pub struct Programs {
    /// Present when we loaded the object ourselves; dropping it detaches unpinned links.
    ebpf: Option<Ebpf>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// exec mode: links detached when this is dropped.
    owned_links: Vec<FdLink>,
    config: Array<MapData, CaptureConfig>,
    intercept: HashMap<MapData, AddrKey, u32>,
    by_client: Mutex<HashMap<MapData, AddrKey, ConnRecord>>,
    /// The Unix-socket programs (`None` when adopted from pins), or why this kernel cannot
    /// have them.
    unix: Result<Option<UnixPrograms>, Unavailable>,
    /// exec mode: the Unix-socket links, detached when this is dropped.
    owned_unix_links: Vec<OwnedFd>,
    unix_maps: UnixMaps,
}

/// The maps of the Unix-socket programs. They exist (and are configured) even where the kernel
/// has no Unix hook, so the pins and the daemon look the same on every kernel.
struct UnixMaps {
    config: Array<MapData, UnixConfig>,
    paths: HashMap<MapData, UnixPath, u32>,
    basenames: HashMap<MapData, BasenameKey, u32>,
    routes: HashMap<MapData, UnixPath, UnixPath>,
    refusals: Option<RingBuf<MapData>>,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> CaptureError {
    move |e| CaptureError::Map {
        map,
        message: e.to_string(),
    }
}

/// Attaches program `$p` to the cgroup `$fd` and returns its link as an [`FdLink`]. Single:
/// nobody can attach programs below ours in this cgroup to override them. The link is taken
/// out of aya's bookkeeping so the caller decides its lifetime. (A macro: the program types
/// share these methods but no trait.)
macro_rules! attach_and_take {
    ($p:expr, $fd:expr, $error:expr) => {{
        let id = $p
            .attach($fd, CgroupAttachMode::Single)
            .map_err(|e| $error(hinted(&e)))?;
        let link = $p.take_link(id).map_err(|e| $error(e.to_string()))?;
        FdLink::try_from(link).map_err(|e| $error(e.to_string()))
    }};
}

impl Programs {
    /// Loads the embedded object. Attach it with [`Programs::attach`]. With `pin_dir`, the maps
    /// the proxy uses are pinned under `<pin_dir>/maps` for a restarted daemon to adopt.
    pub fn load(pin_dir: Option<&Path>) -> Result<Programs, CaptureError> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(load_error)?;
        // First, while `ebpf` still holds every map (the logger takes its own): the Unix
        // programs are relocated onto them.
        let unix = UnixPrograms::load(EBPF_OBJECT, &ebpf).map(Some);
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                // Only the refusal log lines are lost; capture itself is unaffected.
                tracing::debug!(error = %e, "eBPF logger not initialised");
                None
            }
        };
        for name in PROGRAMS {
            load_program(&mut ebpf, name)?;
        }
        if let Some(dir) = pin_dir.map(programs_dir) {
            // The programs themselves, so that a cgroup recreated later (a restarted unit, a
            // stopped and started slice) can be captured again by any process, including a
            // daemon that adopted these pins (`attach_from_pins`).
            std::fs::create_dir_all(&dir).map_err(|e| pin_err(&dir, e))?;
            for name in PROGRAMS {
                let path = dir.join(name);
                if let Some(program) = ebpf.program_mut(name) {
                    program.pin(&path).map_err(|e| pin_err(&path, e))?;
                }
            }
            if let Ok(Some(unix)) = &unix {
                unix.pin(&dir).map_err(|e| pin_err(&dir, e))?;
            }
        }
        let maps_dir = pin_dir.map(|d| d.join("maps"));
        if let Some(dir) = &maps_dir {
            std::fs::create_dir_all(dir).map_err(|e| pin_err(dir, e))?;
        }
        let mut take = |name: &'static str| -> Result<Map, CaptureError> {
            let map = ebpf.take_map(name).ok_or(CaptureError::Map {
                map: name,
                message: "missing from the eBPF object".to_owned(),
            })?;
            if let Some(dir) = &maps_dir {
                let path = dir.join(name);
                map.pin(&path).map_err(|e| pin_err(&path, e))?;
            }
            Ok(map)
        };
        let config =
            Array::try_from(take(common::maps::CONFIG)?).map_err(map_err(common::maps::CONFIG))?;
        let intercept = HashMap::try_from(take(common::maps::INTERCEPT)?)
            .map_err(map_err(common::maps::INTERCEPT))?;
        let by_client = HashMap::try_from(take(common::maps::CONN_BY_CLIENT)?)
            .map_err(map_err(common::maps::CONN_BY_CLIENT))?;
        let unix_maps = UnixMaps::from_maps(take)?;
        Ok(Programs {
            ebpf: Some(ebpf),
            logger,
            owned_links: Vec::new(),
            config,
            intercept,
            by_client: Mutex::new(by_client),
            unix,
            owned_unix_links: Vec::new(),
            unix_maps,
        })
    }

    /// `Err` with the reason when Unix-domain sockets are not captured on this host (kernels
    /// before 6.7): the caller warns, journals, or refuses to start (`capture.unix.required`).
    pub fn unix_status(&self) -> Result<(), Unavailable> {
        self.unix.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// The ring of refused Unix-socket connects, for the gateway to journal (once).
    pub fn take_unix_refusals(&mut self) -> Option<RingBuf<MapData>> {
        self.unix_maps.refusals.take()
    }

    /// The eBPF side's log lines (refusals), to be forwarded by [`forward_kernel_logs`].
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Writes the settings into the maps. Until this runs, CONFIG is all zero and the programs
    /// refuse every TCP connect.
    pub fn configure(&mut self, settings: &Settings) -> Result<(), CaptureError> {
        let keys: Vec<AddrKey> = self.intercept.keys().filter_map(Result::ok).collect();
        for key in keys {
            self.intercept
                .remove(&key)
                .map_err(map_err(common::maps::INTERCEPT))?;
        }
        for pattern in &settings.intercept {
            self.intercept
                .insert(dest_key(pattern), 1, 0)
                .map_err(map_err(common::maps::INTERCEPT))?;
        }
        let config = CaptureConfig {
            mode: if settings.intercept_all {
                common::MODE_ALL
            } else {
                common::MODE_LISTED
            },
            proxy_port4: u32::from(settings.proxy_port4),
            proxy_port6: u32::from(settings.proxy_port6),
            udp_allow_all: u32::from(settings.udp_allow_all),
        };
        self.config
            .set(0, config, 0)
            .map_err(map_err(common::maps::CONFIG))?;
        self.unix_maps
            .configure(&settings.unix, &settings.unix_routes)
    }

    /// Attaches every program to `cgroup`, owned by this process (exec mode): the links are
    /// detached when `self` is dropped or the process dies.
    pub fn attach(&mut self, cgroup: &Cgroup) -> Result<(), CaptureError> {
        for name in PROGRAMS {
            let link = self.attach_one(cgroup, name)?;
            self.owned_links.push(link);
        }
        for (_, link) in self.attach_unix(cgroup)? {
            self.owned_unix_links.push(link);
        }
        Ok(())
    }

    /// Attaches the Unix-socket programs, if this kernel has them (else nothing: the caller
    /// reports [`Programs::unix_status`]).
    fn attach_unix(&self, cgroup: &Cgroup) -> Result<Vec<(&'static str, OwnedFd)>, CaptureError> {
        let Ok(Some(unix)) = &self.unix else {
            return Ok(Vec::new());
        };
        let fd = cgroup.open()?;
        unix.attach(fd.as_fd())
            .map_err(|message| CaptureError::Attach {
                program: common::programs::UNIX_CONNECT,
                cgroup: cgroup.path().display().to_string(),
                message,
            })
    }

    fn attach_one(&mut self, cgroup: &Cgroup, name: &'static str) -> Result<FdLink, CaptureError> {
        let attach_error = |message: String| CaptureError::Attach {
            program: name,
            cgroup: cgroup.path().display().to_string(),
            message,
        };
        let ebpf = self.ebpf.as_mut().ok_or_else(|| {
            attach_error("programs were adopted from pins, not loaded".to_owned())
        })?;
        let fd = cgroup.open()?;
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| attach_error("missing from the eBPF object".to_owned()))?;
        match program {
            aya::programs::Program::CgroupSockAddr(p) => attach_and_take!(p, &fd, attach_error),
            aya::programs::Program::CgroupSock(p) => attach_and_take!(p, &fd, attach_error),
            aya::programs::Program::SockOps(p) => attach_and_take!(p, &fd, attach_error),
            _ => Err(attach_error("unexpected program type".to_owned())),
        }
    }

    /// Adopts the maps a previous daemon pinned under `pin_dir` (whose links are still
    /// attached), so capture continues without re-attaching.
    pub fn adopt(pin_dir: &Path) -> Result<Programs, CaptureError> {
        let dir = pin_dir.join("maps");
        let open = |name: &'static str| -> Result<Map, CaptureError> {
            let path = dir.join(name);
            let data = MapData::from_pin(&path).map_err(|e| pin_err(&path, e))?;
            Map::from_map_data(data).map_err(map_err(name))
        };
        Ok(Programs {
            ebpf: None,
            logger: None,
            owned_links: Vec::new(),
            config: Array::try_from(open(common::maps::CONFIG)?)
                .map_err(map_err(common::maps::CONFIG))?,
            intercept: HashMap::try_from(open(common::maps::INTERCEPT)?)
                .map_err(map_err(common::maps::INTERCEPT))?,
            by_client: Mutex::new(
                HashMap::try_from(open(common::maps::CONN_BY_CLIENT)?)
                    .map_err(map_err(common::maps::CONN_BY_CLIENT))?,
            ),
            // The pinned links are attached or not; what matters now is whether the kernel
            // has the hook at all, which `pins_complete` already required links for.
            unix: super::unix::probe().map(|()| None),
            owned_unix_links: Vec::new(),
            unix_maps: UnixMaps::from_maps(open)?,
        })
    }

    fn by_client_data(&self) -> std::sync::MutexGuard<'_, HashMap<MapData, AddrKey, ConnRecord>> {
        self.by_client.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl UnixMaps {
    fn from_maps(
        mut take: impl FnMut(&'static str) -> Result<Map, CaptureError>,
    ) -> Result<UnixMaps, CaptureError> {
        Ok(UnixMaps {
            config: Array::try_from(take(common::maps::UNIX_CONFIG)?)
                .map_err(map_err(common::maps::UNIX_CONFIG))?,
            paths: HashMap::try_from(take(common::maps::UNIX_PATHS)?)
                .map_err(map_err(common::maps::UNIX_PATHS))?,
            basenames: HashMap::try_from(take(common::maps::UNIX_BASENAMES)?)
                .map_err(map_err(common::maps::UNIX_BASENAMES))?,
            routes: HashMap::try_from(take(common::maps::UNIX_ROUTES)?)
                .map_err(map_err(common::maps::UNIX_ROUTES))?,
            refusals: Some(
                RingBuf::try_from(take(common::maps::UNIX_REFUSALS)?)
                    .map_err(map_err(common::maps::UNIX_REFUSALS))?,
            ),
        })
    }

    /// Replaces the rules and routes. The program refuses while `configured` is 0, so it is
    /// cleared first and set last: a connect during the update is refused, never judged by half
    /// the rules.
    ///
    /// A route's listener path is denied as an exact path (whatever `allow` says): the program
    /// judges the address the caller passed, before any rewrite, so only a routed connect
    /// reaches a listener, and the journal's destination is always the routed path.
    fn configure(
        &mut self,
        rules: &UnixRules,
        routes: &[(UnixPath, UnixPath)],
    ) -> Result<(), CaptureError> {
        let unconfigured = UnixConfig::default();
        self.config
            .set(0, unconfigured, 0)
            .map_err(map_err(common::maps::UNIX_CONFIG))?;
        let keys: Vec<UnixPath> = self.paths.keys().filter_map(Result::ok).collect();
        for key in keys {
            self.paths
                .remove(&key)
                .map_err(map_err(common::maps::UNIX_PATHS))?;
        }
        let listeners = routes
            .iter()
            .map(|(_, listener)| (listener, &common::UNIX_DENY));
        for (path, verdict) in rules.paths.iter().map(|(p, v)| (p, v)).chain(listeners) {
            self.paths
                .insert(path, verdict, 0)
                .map_err(map_err(common::maps::UNIX_PATHS))?;
        }
        let keys: Vec<UnixPath> = self.routes.keys().filter_map(Result::ok).collect();
        for key in keys {
            self.routes
                .remove(&key)
                .map_err(map_err(common::maps::UNIX_ROUTES))?;
        }
        for (routed, listener) in routes {
            self.routes
                .insert(routed, listener, 0)
                .map_err(map_err(common::maps::UNIX_ROUTES))?;
        }
        let keys: Vec<BasenameKey> = self.basenames.keys().filter_map(Result::ok).collect();
        for key in keys {
            self.basenames
                .remove(&key)
                .map_err(map_err(common::maps::UNIX_BASENAMES))?;
        }
        for key in &rules.basenames {
            self.basenames
                .insert(key, common::UNIX_DENY, 0)
                .map_err(map_err(common::maps::UNIX_BASENAMES))?;
        }
        self.config
            .set(
                0,
                UnixConfig {
                    configured: 1,
                    default_verdict: rules.default_verdict,
                    prefix_lens: rules.prefix_lens,
                },
                0,
            )
            .map_err(map_err(common::maps::UNIX_CONFIG))
    }
}

fn pin_err(path: &Path, e: impl std::fmt::Display) -> CaptureError {
    CaptureError::Pin {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// A load error, with what to do when it is a missing privilege: the kernel answers EPERM
/// to map and program creation without CAP_BPF (CAP_SYS_ADMIN before 5.8), which aya reports
/// as a bare "failed to create map".
fn load_error(e: aya::EbpfError) -> CaptureError {
    CaptureError::Load(hinted(&e))
}

/// `e`'s text, and, when the kernel said EPERM or EACCES anywhere in its causes (loading a
/// program, creating a map, attaching), which capabilities are missing: the bare errno says
/// nothing an operator can act on.
fn hinted(e: &(dyn std::error::Error + 'static)) -> String {
    let mut denied = false;
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            denied |= matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES));
        }
        source = err.source();
    }
    let mut message = e.to_string();
    if denied {
        message.push_str(
            ": permission denied; the gateway needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN \
             (CAP_SYS_ADMIN on kernels before 5.8, which are not supported): run it as root with those capabilities \
             (for the service, check the unit's CapabilityBoundingSet with `interceptor doctor`)",
        );
    }
    message
}

fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), CaptureError> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| CaptureError::Load(format!("program {name} missing from the object")))?;
    let result = match program {
        aya::programs::Program::CgroupSockAddr(p) => p.load(),
        aya::programs::Program::CgroupSock(p) => p.load(),
        aya::programs::Program::SockOps(p) => p.load(),
        _ => {
            return Err(CaptureError::Load(format!(
                "{name}: unexpected program type"
            )))
        }
    };
    result.map_err(|e| CaptureError::Load(format!("{name}: {}", hinted(&e))))
}

/// The `INTERCEPT` key for a destination pattern.
pub fn dest_key(pattern: &DestPattern) -> AddrKey {
    match *pattern {
        DestPattern::Exact(addr) => addr_key(addr),
        DestPattern::AnyAddress(port) => AddrKey {
            ip: [0; 4],
            port: u32::from(port),
        },
    }
}

/// The map encoding of a socket address: IPv4 as v4-mapped, words in network order.
pub fn addr_key(addr: SocketAddr) -> AddrKey {
    let octets = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let word =
        |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
    AddrKey {
        ip: [word(0), word(4), word(8), word(12)],
        port: u32::from(addr.port()),
    }
}

/// The socket address an [`AddrKey`] encodes (IPv4 for v4-mapped).
pub fn key_addr(key: &AddrKey) -> SocketAddr {
    let mut octets = [0u8; 16];
    for (i, w) in key.ip.iter().enumerate() {
        octets[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = std::net::Ipv6Addr::from(octets);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, key.port as u16)
}

impl ConnectionLookup for Programs {
    fn take(&self, peer: SocketAddr) -> Option<ConnRecord> {
        let key = addr_key(normalize(peer));
        let mut map = self.by_client_data();
        let record = map.get(&key, 0).ok()?;
        // The record is consumed: a later connection reusing this source port must not inherit it.
        let _ = map.remove(&key);
        Some(record)
    }
}

/// Where the service keeps its pins for one cgroup: `<pin_dir>/links/<cgroup id>/`.
pub fn link_dir(pin_dir: &Path, cgroup_id: u64) -> PathBuf {
    pin_dir.join("links").join(cgroup_id.to_string())
}

/// Where the programs are pinned (service mode).
pub fn programs_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("progs")
}

/// Attaches the programs pinned under `pin_dir` (see [`Programs::load`]) to `cgroup` and pins
/// the links in its link directory, so they stay attached when this process exits (service
/// mode). It needs nothing but the pins: the daemon attaches its cgroups with it at start,
/// and re-captures a recreated cgroup with it, whether it loaded the programs or adopted them.
pub fn attach_from_pins(pin_dir: &Path, cgroup: &Cgroup) -> Result<(), CaptureError> {
    use aya::programs::{
        cgroup_sock::CgroupSockAttachType as Sock,
        cgroup_sock_addr::CgroupSockAddrAttachType as Addr, CgroupSock, CgroupSockAddr, SockOps,
    };
    let progs = programs_dir(pin_dir);
    let links = link_dir(pin_dir, cgroup.id()?);
    std::fs::create_dir_all(&links).map_err(|e| pin_err(&links, e))?;
    let fd = cgroup.open()?;
    for name in PROGRAMS {
        let path = progs.join(name);
        let failed = |message: String| CaptureError::Attach {
            program: name,
            cgroup: cgroup.path().display().to_string(),
            message,
        };
        let addr = |kind: Addr| -> Result<FdLink, CaptureError> {
            let mut p = CgroupSockAddr::from_pin(&path, kind).map_err(|e| failed(e.to_string()))?;
            attach_and_take!(p, &fd, failed)
        };
        let sock = |kind: Sock| -> Result<FdLink, CaptureError> {
            let mut p = CgroupSock::from_pin(&path, kind).map_err(|e| failed(e.to_string()))?;
            attach_and_take!(p, &fd, failed)
        };
        let link = match name {
            common::programs::SOCK_OPS => {
                let mut p = SockOps::from_pin(&path).map_err(|e| failed(e.to_string()))?;
                attach_and_take!(p, &fd, failed)?
            }
            common::programs::SOCK_RELEASE => sock(Sock::SockRelease)?,
            common::programs::SOCK_CREATE => sock(Sock::SockCreate)?,
            common::programs::GETPEERNAME4 => addr(Addr::GetPeerName4)?,
            common::programs::GETPEERNAME6 => addr(Addr::GetPeerName6)?,
            common::programs::SENDMSG4 => addr(Addr::UDPSendMsg4)?,
            common::programs::SENDMSG6 => addr(Addr::UDPSendMsg6)?,
            common::programs::CONNECT4 => addr(Addr::Connect4)?,
            common::programs::CONNECT6 => addr(Addr::Connect6)?,
            _ => return Err(failed("no attach type known for it".to_owned())),
        };
        let pinned = links.join(name);
        link.pin(&pinned).map_err(|e| pin_err(&pinned, e))?;
    }
    if let Ok(unix) = UnixPrograms::from_pins(&progs) {
        for (name, link) in unix
            .attach(fd.as_fd())
            .map_err(|message| CaptureError::Attach {
                program: common::programs::UNIX_CONNECT,
                cgroup: cgroup.path().display().to_string(),
                message,
            })?
        {
            let path = links.join(name);
            super::unix::pin(link.as_fd(), &path).map_err(|e| pin_err(&path, e))?;
        }
    }
    Ok(())
}

/// Forwards the eBPF programs' log lines (through the `log` facade) until the task is dropped.
pub async fn forward_kernel_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd and never replaces or closes it while the
    // AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(error = %e, "cannot poll the eBPF log ring");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_the_map_encoding() {
        for text in ["127.0.0.2:5432", "[::1]:80", "[fe80::1]:22"] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(key_addr(&addr_key(addr)), addr);
        }
        let mapped: SocketAddr = "[::ffff:127.0.0.3]:9".parse().unwrap();
        assert_eq!(addr_key(mapped), addr_key("127.0.0.3:9".parse().unwrap()));
        assert_eq!(key_addr(&addr_key(mapped)), "127.0.0.3:9".parse().unwrap());
    }

    #[test]
    fn ipv4_matches_the_kernel_layout() {
        let key = addr_key("127.0.0.1:1".parse().unwrap());
        assert_eq!(key.ip[2], common::V4_MAPPED_WORD);
        assert_eq!(key.ip[3].to_ne_bytes(), [127, 0, 0, 1]);
    }
}
