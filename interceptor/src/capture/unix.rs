//! Unix-domain sockets: a captured process must not reach a database or a container runtime
//! through its socket file, around the gateway.
//!
//! Why this exists: the TCP hooks never see `connect()` on an AF_UNIX socket, and PostgreSQL's
//! `/var/run/postgresql/.s.PGSQL.5432` with `peer` or `trust` authentication is a full bypass.
//! Linux 6.7 added `BPF_CGROUP_UNIX_CONNECT` (and `_SENDMSG`), which can refuse such a connect.
//!
//! What it does: judges the socket *path* the caller passed. Exact paths (allow or deny) decide
//! first, then a short list of denied file names (`.s.PGSQL.*`, `docker.sock`, ...), then the
//! default (`allow`, or `deny` for an allowlist). A refusal fails the call with EPERM and is
//! reported through `UNIX_REFUSALS` for the journal.
//!
//! Routing: a target may list `unix:/path` in its `intercept`. A `connect()` to exactly that path
//! is rewritten in the kernel (kfunc `bpf_sock_addr_set_sun_path`) to the gateway's own listener
//! for it (`gateway::unix_routes`), where the session runs like a TCP one to that target. Routes
//! are decided before any rule, so routing a path the built-in list denies (`.s.PGSQL.5432`) is
//! how an operator puts a local database socket behind the gate. Only `connect()` is routed: a
//! datagram `sendmsg()` to a routed path is refused. The listeners' own paths are denied to
//! direct connects, so the only way in is through a route.
//!
//! What it does not do: resolve the path. A symlink or hard link to a denied socket under
//! another name, or a relative path in the socket's own directory under a renamed file, is
//! judged by the name the caller used; `default = "deny"` closes that gap. The same holds for
//! routes: only the exact path is routed, and another spelling of it meets the rules.
//!
//! How it is loaded: aya 0.14 knows no Unix attach type, and a cgroup sock_addr program must be
//! loaded with the attach type it will be attached with. So this module takes the programs'
//! instructions from the same object with aya-obj, relocates their map references onto the maps
//! aya already created, rewrites the kfunc slot (see `interceptor_common::kfunc_slots`) into a
//! kfunc call against the kernel's BTF, and calls `BPF_PROG_LOAD` and `BPF_LINK_CREATE` itself.
//! On kernels without the hook nothing is loaded and [`Unavailable`] says why: TCP capture is
//! unaffected, and `doctor`, `exec` and `run` say so loudly.

use std::{
    collections::HashSet,
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use aya::{maps::Map, Ebpf};
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type};
use interceptor_common::{
    self as common, basename_hash, kfunc_slots, BasenameKey, UnixPath, UNIX_ALLOW,
    UNIX_BASENAME_ENTRIES, UNIX_DENY, UNIX_PATH_MAX, UNIX_PREFIX_LENS,
};
use serde::Deserialize;

/// Capacity of `UNIX_PATHS` (as declared in `interceptor-ebpf`).
pub const UNIX_PATH_ENTRIES: u32 = 1_024;

/// File names refused by default, wherever the socket lives: the database servers and container
/// runtimes an agent could use to bypass the gateway (or to become root, for the runtimes).
pub const BUILTIN_DENIED_BASENAMES: &[&str] = &[
    ".s.PGSQL.*",  // PostgreSQL (and PgBouncer)
    "mysqld.sock", // MySQL, MariaDB
    "mysql.sock",  // MySQL on RHEL-like systems
    "mysqlx.sock", // MySQL X protocol
    "mongodb-*",   // MongoDB (mongodb-27017.sock)
    "redis.sock",  // Redis
    "redis-server.sock",
    "docker.sock",     // Docker (root-equivalent)
    "containerd.sock", // containerd
    "podman.sock",     // Podman
    "crio.sock",       // CRI-O
];

/// `[capture.unix]`: which Unix sockets a captured process may connect to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixCaptureConfig {
    /// The answer when no rule matches: `allow` (a denylist) or `deny` (an allowlist).
    #[serde(default)]
    pub default: UnixDefault,
    /// Refuse [`BUILTIN_DENIED_BASENAMES`] (on top of `deny`).
    #[serde(default = "yes")]
    pub builtin_deny: bool,
    /// More sockets to refuse: absolute paths, `@abstract` names, or file names (`name`, or
    /// `prefix*`) matched in any directory.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Sockets always allowed: absolute paths or `@abstract` names. They win over `deny` and
    /// the built-in names.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Refuse to start `exec` and `run` when the kernel cannot enforce this (before 6.7),
    /// instead of warning and journaling the gap.
    #[serde(default)]
    pub required: bool,
}

fn yes() -> bool {
    true
}

impl Default for UnixCaptureConfig {
    fn default() -> Self {
        UnixCaptureConfig {
            default: UnixDefault::default(),
            builtin_deny: true,
            deny: Vec::new(),
            allow: Vec::new(),
            required: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnixDefault {
    #[default]
    Allow,
    Deny,
}

/// The rules as the program reads them: exact paths with a verdict, denied basenames, and the
/// default. Built by [`UnixCaptureConfig::rules`], which is where bad entries are reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixRules {
    pub paths: Vec<(UnixPath, u32)>,
    pub basenames: Vec<BasenameKey>,
    /// The distinct lengths of the prefix patterns (0: unused).
    pub prefix_lens: [u32; UNIX_PREFIX_LENS],
    pub default_verdict: u32,
}

impl UnixCaptureConfig {
    pub fn rules(&self) -> Result<UnixRules, String> {
        let mut paths = Vec::new();
        let mut basenames = Vec::new();
        let builtin: &[&str] = if self.builtin_deny {
            BUILTIN_DENIED_BASENAMES
        } else {
            &[]
        };
        let builtin = builtin.iter().map(|s| (*s).to_owned());
        for entry in builtin.chain(self.deny.iter().cloned()) {
            match parse_entry(&entry).map_err(|e| format!("capture.unix.deny: {e}"))? {
                Entry::Path(p) => paths.push((p, UNIX_DENY)),
                Entry::Basename(b) => basenames.push(b),
            }
        }
        for entry in &self.allow {
            match parse_entry(entry).map_err(|e| format!("capture.unix.allow: {e}"))? {
                Entry::Path(p) => {
                    // An allow wins over a deny of the same path.
                    paths.retain(|(q, _)| *q != p);
                    paths.push((p, UNIX_ALLOW));
                }
                Entry::Basename(_) => {
                    return Err(format!(
                        "capture.unix.allow: {entry:?} is not an absolute path or an @abstract \
                         name (allow entries name one socket)"
                    ))
                }
            }
        }
        let mut prefix_lens = [0u32; UNIX_PREFIX_LENS];
        for key in basenames.iter().filter(|k| k.prefix == 1) {
            if prefix_lens.contains(&key.len) {
                continue;
            }
            let free = prefix_lens.iter_mut().find(|l| **l == 0).ok_or_else(|| {
                format!(
                    "capture.unix.deny: \"prefix*\" patterns may have at most \
                     {UNIX_PREFIX_LENS} different lengths (counting the built-in ones)"
                )
            })?;
            *free = key.len;
        }
        if basenames.len() > UNIX_BASENAME_ENTRIES as usize
            || paths.len() > UNIX_PATH_ENTRIES as usize
        {
            return Err(format!(
                "capture.unix: at most {UNIX_BASENAME_ENTRIES} file-name patterns and \
                 {UNIX_PATH_ENTRIES} paths"
            ));
        }
        Ok(UnixRules {
            paths,
            basenames,
            prefix_lens,
            default_verdict: match self.default {
                UnixDefault::Allow => UNIX_ALLOW,
                UnixDefault::Deny => UNIX_DENY,
            },
        })
    }
}

enum Entry {
    Path(UnixPath),
    Basename(BasenameKey),
}

/// A socket address as the program compares it (see [`UnixPath`]).
fn unix_path(text: &str, bytes: &[u8]) -> Result<UnixPath, String> {
    if bytes.len() > UNIX_PATH_MAX {
        return Err(format!(
            "{text:?} is longer than a socket address ({UNIX_PATH_MAX} bytes)"
        ));
    }
    let mut p = UnixPath {
        len: bytes.len() as u32,
        ..UnixPath::default()
    };
    p.path[..bytes.len()].copy_from_slice(bytes);
    Ok(p)
}

/// A filesystem socket path (absolute, no NUL, fits `sun_path`) as the program compares it:
/// the key of a route, or a listener the program rewrites connects to.
pub fn filesystem_path(text: &str) -> Result<UnixPath, String> {
    if !text.starts_with('/') {
        return Err(format!("{text:?} is not an absolute path"));
    }
    if text.contains('\0') {
        return Err(format!("{text:?} contains a NUL byte"));
    }
    unix_path(text, text.as_bytes())
}

fn parse_entry(text: &str) -> Result<Entry, String> {
    if text.starts_with('/') {
        return filesystem_path(text).map(Entry::Path);
    }
    if let Some(name) = text.strip_prefix('@') {
        // The kernel's abstract namespace: a leading NUL, then the name.
        let bytes: Vec<u8> = std::iter::once(0).chain(name.bytes()).collect();
        return unix_path(text, &bytes).map(Entry::Path);
    }
    let (name, prefix) = match text.strip_suffix('*') {
        Some(stem) => (stem, true),
        None => (text, false),
    };
    if name.is_empty() || name.contains(['/', '*', '?', '[', '\0']) {
        return Err(format!(
            "{text:?} is not an absolute path, an @abstract name, or a file name \
             (\"name\" or \"prefix*\")"
        ));
    }
    if name.len() > UNIX_PATH_MAX {
        return Err(format!("{text:?} is longer than a socket address"));
    }
    let hash = basename_hash(name.as_bytes());
    if hash == 0 {
        // The program looks up 0 for "prefix length not reached": it must never match.
        return Err(format!("{text:?} hashes to 0; rename the pattern"));
    }
    Ok(Entry::Basename(BasenameKey {
        hash,
        len: name.len() as u32,
        prefix: u32::from(prefix),
    }))
}

/// How a socket address is shown in the journal and logs: the path, or `@name` for an abstract
/// name (with non-printable bytes escaped).
pub fn display_path(p: &UnixPath) -> String {
    let bytes = &p.path[..(p.len as usize).min(UNIX_PATH_MAX)];
    match bytes.split_first() {
        Some((0, name)) => format!("@{}", name.escape_ascii()),
        _ => bytes.escape_ascii().to_string(),
    }
}

/// Why Unix-socket capture is not in force on this host.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// The kernel has no `BPF_CGROUP_UNIX_CONNECT` (before 6.7).
    #[error("kernel {release} has no BPF_CGROUP_UNIX_CONNECT hook (Linux 6.7+ needed for Unix-socket capture)")]
    KernelTooOld { release: String },
    /// The kernel's BTF (needed to call its functions) could not be read.
    #[error("cannot read the kernel's BTF (/sys/kernel/btf/vmlinux): {0}")]
    NoBtf(String),
    /// The hook exists but the program did not load: a bug, or an unexpected kernel.
    #[error("loading the Unix-socket program failed: {0}")]
    Load(String),
}

/// The fix printed with [`Unavailable`] (doctor, exec, run, docs/security.md).
pub const FIX_UNAVAILABLE: &str = "kernel 6.7+ needed for Unix-socket capture; until then use \
    InaccessiblePaths= for service agents (e.g. InaccessiblePaths=/run/postgresql \
    /var/run/docker.sock), and keep exec agents away from database sockets by file permissions";

/// The two loaded programs (connect and sendmsg), not yet attached.
#[derive(Debug)]
pub struct UnixPrograms {
    connect: OwnedFd,
    sendmsg: OwnedFd,
}

/// The link names under a cgroup's link directory (service mode pins).
pub const LINK_CONNECT: &str = "judge_unix_connect";
pub const LINK_SENDMSG: &str = "judge_unix_sendmsg";

impl UnixPrograms {
    /// Loads both programs from `object` (the embedded ELF that `ebpf` was loaded from), their
    /// map references pointing at `ebpf`'s maps.
    pub fn load(object: &[u8], ebpf: &Ebpf) -> Result<UnixPrograms, Unavailable> {
        let btf = kernel_btf_with_unix_hooks()?;
        let mut kfuncs = Vec::new();
        for (slot, name) in kfunc_slots::ALL {
            let id = btf
                .id_by_type_name_kind(name, aya_obj::btf::BtfKind::Func)
                .map_err(|e| Unavailable::Load(format!("kernel function {name}: {e}")))?;
            kfuncs.push((slot, id));
        }
        let instructions = relocated_instructions(object, ebpf)?;
        let load = |name: &str, attach: bpf_attach_type| -> Result<OwnedFd, Unavailable> {
            let mut insns = instructions
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, i)| i.clone())
                .ok_or_else(|| Unavailable::Load(format!("{name} missing from the object")))?;
            patch_kfunc_calls(&mut insns, &kfuncs)?;
            prog_load(name, &insns, attach).map_err(Unavailable::Load)
        };
        Ok(UnixPrograms {
            connect: load(
                common::programs::UNIX_CONNECT,
                bpf_attach_type::BPF_CGROUP_UNIX_CONNECT,
            )?,
            sendmsg: load(
                common::programs::UNIX_SENDMSG,
                bpf_attach_type::BPF_CGROUP_UNIX_SENDMSG,
            )?,
        })
    }

    /// Attaches both programs to the cgroup open as `cgroup`; returns the links (the programs
    /// stay attached while a link fd is open or pinned). Link-based, like aya's own attach
    /// (`CgroupAttachMode::Single` also means flags 0 with `BPF_LINK_CREATE`).
    pub fn attach(&self, cgroup: BorrowedFd<'_>) -> Result<Vec<(&'static str, OwnedFd)>, String> {
        Ok(vec![
            (
                LINK_CONNECT,
                link_create(
                    self.connect.as_fd(),
                    cgroup,
                    bpf_attach_type::BPF_CGROUP_UNIX_CONNECT,
                )?,
            ),
            (
                LINK_SENDMSG,
                link_create(
                    self.sendmsg.as_fd(),
                    cgroup,
                    bpf_attach_type::BPF_CGROUP_UNIX_SENDMSG,
                )?,
            ),
        ])
    }
}

impl UnixPrograms {
    /// Pins both programs in `dir` (service mode: see `programs::attach_from_pins`).
    pub fn pin(&self, dir: &Path) -> Result<(), String> {
        pin(self.connect.as_fd(), &dir.join(LINK_CONNECT))?;
        pin(self.sendmsg.as_fd(), &dir.join(LINK_SENDMSG))
    }

    /// The programs [`UnixPrograms::pin`] left in `dir`.
    pub fn from_pins(dir: &Path) -> Result<UnixPrograms, String> {
        Ok(UnixPrograms {
            connect: obj_get(&dir.join(LINK_CONNECT))?,
            sendmsg: obj_get(&dir.join(LINK_SENDMSG))?,
        })
    }
}

/// `BPF_OBJ_GET`: the object pinned at `path`.
fn obj_get(path: &Path) -> Result<OwnedFd, String> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: see `prog_load`.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_OBJ_GET member of the union (the same as BPF_OBJ_PIN's).
    let obj = unsafe { &mut attr.__bindgen_anon_4 };
    obj.pathname = c_path.as_ptr() as u64;
    sys_bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)
        .map_err(|e| format!("BPF_OBJ_GET {}: {e}", path.display()))
}

/// Whether this kernel has the Unix-socket hooks, without loading anything (`doctor`, and a
/// daemon adopting pins).
pub fn probe() -> Result<(), Unavailable> {
    kernel_btf_with_unix_hooks().map(|_| ())
}

fn kernel_btf_with_unix_hooks() -> Result<aya_obj::btf::Btf, Unavailable> {
    let btf = aya_obj::btf::Btf::from_sys_fs().map_err(|e| Unavailable::NoBtf(e.to_string()))?;
    // The kfunc that came with the Unix hooks (6.7) is the feature probe: one BTF lookup
    // instead of a failed load with an ambiguous EINVAL.
    match btf.id_by_type_name_kind("bpf_sock_addr_set_sun_path", aya_obj::btf::BtfKind::Func) {
        Ok(_) => Ok(btf),
        Err(_) => Err(Unavailable::KernelTooOld {
            release: kernel_release(),
        }),
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "(unknown)".to_owned())
}

/// The fd behind one of aya's maps, for relocating our own copy of the instructions.
fn map_fd(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::RingBuf(d)
        | Map::PerfEventArray(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// Every program's instructions, with map references and BPF-to-BPF calls resolved as aya does
/// in `EbpfLoader::load`, against the maps `ebpf` created.
fn relocated_instructions(
    object: &[u8],
    ebpf: &Ebpf,
) -> Result<Vec<(String, Vec<bpf_insn>)>, Unavailable> {
    let mut obj = aya_obj::Object::parse(object).map_err(|e| Unavailable::Load(e.to_string()))?;
    let fds: std::collections::HashMap<&str, RawFd> = ebpf
        .maps()
        .filter_map(|(name, map)| Some((name, map_fd(map)?)))
        .collect();
    let maps = obj.maps.clone();
    // Every map needs its fd: aya-obj falls back to matching by section for a map it was not
    // given, and all our maps share one section, so a missing one would be silently replaced.
    let mut relocations = Vec::with_capacity(maps.len());
    for (name, map) in &maps {
        let fd = fds.get(name.as_str()).ok_or_else(|| {
            Unavailable::Load(format!(
                "map {name} is not available for relocation (taken before the Unix programs load?)"
            ))
        })?;
        relocations.push((name.as_str(), *fd, map));
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(relocations.into_iter(), &text_sections)
        .map_err(|e| Unavailable::Load(format!("relocating maps: {e}")))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| Unavailable::Load(format!("relocating calls: {e}")))?;
    Ok(obj
        .programs
        .iter()
        .filter_map(|(name, program)| {
            let function = obj.functions.get(&program.function_key())?;
            Some((name.clone(), function.instructions.clone()))
        })
        .collect())
}

const BPF_JMP: u8 = 0x05;
const BPF_CALL: u8 = 0x80;
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;

/// Turns each helper call to a kfunc slot into a kfunc call (`src_reg = BPF_PSEUDO_KFUNC_CALL`,
/// `imm` = the function's BTF id in vmlinux, `off = 0`). A slot left unpatched would make the
/// verifier reject the program (no such helper), never run something else.
fn patch_kfunc_calls(insns: &mut [bpf_insn], kfuncs: &[(u32, u32)]) -> Result<(), Unavailable> {
    for insn in insns.iter_mut() {
        if insn.code != (BPF_JMP | BPF_CALL) || insn.src_reg() != 0 {
            continue;
        }
        if let Some((_, id)) = kfuncs.iter().find(|(slot, _)| insn.imm as u32 == *slot) {
            insn.set_src_reg(BPF_PSEUDO_KFUNC_CALL);
            insn.imm = i32::try_from(*id)
                .map_err(|_| Unavailable::Load(format!("BTF id {id} out of range")))?;
            insn.off = 0;
        }
    }
    Ok(())
}

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a fully initialised bpf_attr that outlives the call; the pointers in it
    // (instructions, license, log, path) point at buffers the callers keep alive across it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| std::io::Error::other("fd out of range"))?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_PROG_LOAD` as a cgroup sock_addr program with `attach` as its expected attach type. On
/// failure, loads once more with the verifier log and returns its tail.
fn prog_load(name: &str, insns: &[bpf_insn], attach: bpf_attach_type) -> Result<OwnedFd, String> {
    let license = CString::new("Dual MIT/GPL").map_err(|e| e.to_string())?;
    let attempt = |log: Option<&mut Vec<u8>>| {
        // SAFETY: bpf_attr is plain data; all zero is its documented "unset".
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the BPF_PROG_LOAD member of the union, which is the one the kernel reads.
        let load = unsafe { &mut attr.__bindgen_anon_3 };
        load.prog_type = bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR as u32;
        load.expected_attach_type = attach as u32;
        load.insns = insns.as_ptr() as u64;
        load.insn_cnt = insns.len() as u32;
        load.license = license.as_ptr() as u64;
        for (dst, src) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *dst = src as libc::c_char;
        }
        if let Some(log) = log {
            load.log_level = 1;
            load.log_size = log.len() as u32;
            load.log_buf = log.as_mut_ptr() as u64;
        }
        sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
    };
    attempt(None).or_else(|first| {
        let mut log = vec![0u8; 1 << 20];
        let retry = attempt(Some(&mut log));
        let text = String::from_utf8_lossy(&log);
        let text = text.trim_end_matches('\0').trim_end();
        let tail: Vec<&str> = text.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        match retry {
            Ok(fd) => Ok(fd),
            Err(_) => Err(format!(
                "{name}: BPF_PROG_LOAD: {first}; verifier log (tail):\n{}",
                tail.join("\n")
            )),
        }
    })
}

fn link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach: bpf_attach_type,
) -> Result<OwnedFd, String> {
    // SAFETY: see `prog_load`.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_LINK_CREATE member of the union.
    let link = unsafe { &mut attr.link_create };
    link.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    link.__bindgen_anon_2.target_fd = cgroup.as_raw_fd() as u32;
    link.attach_type = attach as u32;
    link.flags = 0;
    sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map_err(|e| format!("BPF_LINK_CREATE: {e}"))
}

/// `BPF_OBJ_PIN`: keeps `fd` (a link) alive in bpffs at `path` after this process exits.
pub fn pin(fd: BorrowedFd<'_>, path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: see `prog_load`.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_OBJ_PIN member of the union.
    let obj = unsafe { &mut attr.__bindgen_anon_4 };
    obj.pathname = c_path.as_ptr() as u64;
    obj.bpf_fd = fd.as_raw_fd() as u32;
    // BPF_OBJ_PIN returns 0, not an fd: don't wrap it.
    // SAFETY: as in `sys_bpf`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_PIN as libc::c_int,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(format!(
            "BPF_OBJ_PIN {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
