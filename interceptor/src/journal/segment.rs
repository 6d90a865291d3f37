//! The journal's write path: a hash-chained, length-prefixed segment log next to the database
//! (`journal.db.segments/000001.log`, …).
//!
//! Why this exists: "record before forward" needs the record to be durable to the promised
//! level before a command goes upstream, not a SQLite transaction. A SQLite commit writes whole
//! 4 KiB pages per commit and does per-row b-tree work; an append is one `write(2)` of the
//! group's bytes (plus an `fdatasync` with `sync = "full"`). SQLite becomes an index of the log
//! ([`super::index`]), filled in the background in large transactions.
//!
//! Format. A segment is a sequence of frames `len: u32 LE | crc32(payload): u32 LE | payload |
//! len: u32 LE`. The trailing copy of the length lets a writer read the last frame from the end
//! without scanning; the CRC tells a torn tail (a write cut short by a crash) from a record.
//! Payloads are [`Record`]s: a segment starts with `Start` (the chain head it continues from),
//! holds `Event`s (one per chained event, carrying its sequence number, previous hash, own hash
//! and content, hashed exactly as [`super::event_hash`] defines) and `Run`s (run bookkeeping,
//! which is not chained, as before), and ends with `Seal` when the next segment takes over.
//!
//! Several processes may append to one log (the service and `exec` runs share the default
//! journal): every group is written under an exclusive `flock` on the active segment, and a
//! writer whose file grew since its own last write re-reads the chain head from the tail first
//! (cheap when nothing changed: one `fstat`). A tail that does not parse is a torn write of a
//! process that died mid-write, never acknowledged: the writer cuts it off under the lock.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    os::unix::io::AsRawFd as _,
    path::{Path, PathBuf},
};

use super::{event_hash_hex, ChainedContent, JournalSync};

/// A segment is sealed and the next one started once it holds this many bytes.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;

/// Frame overhead: the length twice and the CRC.
const FRAME_OVERHEAD: usize = 12;

/// Bound on one record's payload: far above any event ([`super::DEFAULT_STATEMENT_MAX_BYTES`]
/// can be raised, but not past the 64 MiB a message may carry).
const MAX_PAYLOAD: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    #[error("journal segment {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("journal segment {path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the next event goes: its sequence number and the hash it links to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub next_seq: i64,
    pub last_hash: String,
}

/// One chained event as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoggedEvent {
    pub seq: i64,
    pub session_id: Option<i64>,
    pub at: String,
    pub kind: String,
    pub statement: Option<String>,
    pub decision: Option<String>,
    pub rule: Option<String>,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
    pub hint: IndexHint,
}

impl LoggedEvent {
    pub(crate) fn content(&self) -> ChainedContent<'_> {
        ChainedContent {
            id: self.seq,
            session_id: self.session_id,
            at: &self.at,
            kind: &self.kind,
            statement: self.statement.as_deref(),
            decision: self.decision.as_deref(),
            rule: self.rule.as_deref(),
            detail: &self.detail,
        }
    }
}

/// What the index needs besides the chained content, so it never re-parses JSON on the common
/// path. Not hashed: each is a copy of chained content (which `verify` compares the index
/// with), except the session columns the chain never covered (cgroup id, process start,
/// staleness), which were never tamper-evident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IndexHint {
    None,
    /// A `session_open` event: the session row's id is the event's sequence number.
    SessionOpen {
        cgroup_id: i64,
        process_start_ns: Option<i64>,
        stale: bool,
    },
    /// A `result` event: the result column of event `event`, as JSON text.
    Result {
        event: i64,
        result: String,
    },
}

/// Run bookkeeping (the `runs` table), not chained (it never was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunChange {
    Start {
        id: String,
        mode: String,
        command: Option<String>,
        uid: Option<u32>,
        user: Option<String>,
        cgroup_path: String,
        at: String,
    },
    End {
        id: String,
        exit_code: Option<i32>,
        at: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Start(Head),
    Event(Box<LoggedEvent>),
    Run(RunChange),
    Seal(Head),
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

const TAG_START: u8 = 1;
const TAG_EVENT: u8 = 2;
const TAG_RUN_START: u8 = 3;
const TAG_RUN_END: u8 = 4;
const TAG_SEAL: u8 = 5;

const HINT_NONE: u8 = 0;
const HINT_SESSION_OPEN: u8 = 1;
const HINT_RESULT: u8 = 2;

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, v: &str) {
        // Payloads are bounded by MAX_PAYLOAD (checked by `frame`), far below u32::MAX.
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.extend_from_slice(v.as_bytes());
    }
    fn opt_str(&mut self, v: Option<&str>) {
        match v {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            None => self.u8(0),
            Some(n) => {
                self.u8(1);
                self.i64(n);
            }
        }
    }
}

/// An event's fields as they are encoded, borrowed: [`Group::event`] frames a new event from
/// them without first building an owned [`LoggedEvent`] (the append path's allocations were a
/// large share of its cost).
struct EventView<'a> {
    content: ChainedContent<'a>,
    prev_hash: &'a str,
    hash: &'a str,
    hint: &'a IndexHint,
}

impl EventView<'_> {
    fn encode(&self, w: &mut Writer<'_>) {
        let c = &self.content;
        w.u8(TAG_EVENT);
        w.i64(c.id);
        w.opt_i64(c.session_id);
        w.str(c.at);
        w.str(c.kind);
        w.opt_str(c.statement);
        w.opt_str(c.decision);
        w.opt_str(c.rule);
        w.str(c.detail);
        w.str(self.prev_hash);
        w.str(self.hash);
        match self.hint {
            IndexHint::None => w.u8(HINT_NONE),
            IndexHint::SessionOpen {
                cgroup_id,
                process_start_ns,
                stale,
            } => {
                w.u8(HINT_SESSION_OPEN);
                w.i64(*cgroup_id);
                w.opt_i64(*process_start_ns);
                w.u8(u8::from(*stale));
            }
            IndexHint::Result { event, result } => {
                w.u8(HINT_RESULT);
                w.i64(*event);
                w.str(result);
            }
        }
    }
}

/// Appends a frame to `out`: length and CRC-32 of the payload `encode` writes, the payload,
/// and the length again (so the log can be read backwards from its end).
fn frame_with(out: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    encode(out);
    let len = out.len() - start - 8;
    let crc = crc32fast::hash(&out[start + 8..]);
    let len = len as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
}

impl Record {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        match self {
            Record::Start(head) | Record::Seal(head) => {
                w.u8(if matches!(self, Record::Start(_)) {
                    TAG_START
                } else {
                    TAG_SEAL
                });
                w.i64(head.next_seq);
                w.str(&head.last_hash);
            }
            Record::Event(e) => EventView {
                content: e.content(),
                prev_hash: &e.prev_hash,
                hash: &e.hash,
                hint: &e.hint,
            }
            .encode(&mut w),
            Record::Run(RunChange::Start {
                id,
                mode,
                command,
                uid,
                user,
                cgroup_path,
                at,
            }) => {
                w.u8(TAG_RUN_START);
                w.str(id);
                w.str(mode);
                w.opt_str(command.as_deref());
                w.opt_i64(uid.map(i64::from));
                w.opt_str(user.as_deref());
                w.str(cgroup_path);
                w.str(at);
            }
            Record::Run(RunChange::End { id, exit_code, at }) => {
                w.u8(TAG_RUN_END);
                w.str(id);
                w.opt_i64(exit_code.map(i64::from));
                w.str(at);
            }
        }
    }

    /// Appends this record as a frame to `out`.
    pub(crate) fn frame(&self, out: &mut Vec<u8>) {
        frame_with(out, |out| self.encode(out));
    }

    fn decode(payload: &[u8]) -> Result<Record, String> {
        let mut r = Reader(payload);
        let record = match r.u8()? {
            TAG_START => Record::Start(Head {
                next_seq: r.i64()?,
                last_hash: r.str()?,
            }),
            TAG_SEAL => Record::Seal(Head {
                next_seq: r.i64()?,
                last_hash: r.str()?,
            }),
            TAG_EVENT => {
                let seq = r.i64()?;
                let session_id = r.opt_i64()?;
                let at = r.str()?;
                let kind = r.str()?;
                let statement = r.opt_str()?;
                let decision = r.opt_str()?;
                let rule = r.opt_str()?;
                let detail = r.str()?;
                let prev_hash = r.str()?;
                let hash = r.str()?;
                let hint = match r.u8()? {
                    HINT_NONE => IndexHint::None,
                    HINT_SESSION_OPEN => IndexHint::SessionOpen {
                        cgroup_id: r.i64()?,
                        process_start_ns: r.opt_i64()?,
                        stale: r.u8()? != 0,
                    },
                    HINT_RESULT => IndexHint::Result {
                        event: r.i64()?,
                        result: r.str()?,
                    },
                    other => return Err(format!("unknown index hint {other}")),
                };
                Record::Event(Box::new(LoggedEvent {
                    seq,
                    session_id,
                    at,
                    kind,
                    statement,
                    decision,
                    rule,
                    detail,
                    prev_hash,
                    hash,
                    hint,
                }))
            }
            TAG_RUN_START => Record::Run(RunChange::Start {
                id: r.str()?,
                mode: r.str()?,
                command: r.opt_str()?,
                uid: r
                    .opt_i64()?
                    .map(|n| u32::try_from(n).map_err(|_| format!("uid {n} out of range")))
                    .transpose()?,
                user: r.opt_str()?,
                cgroup_path: r.str()?,
                at: r.str()?,
            }),
            TAG_RUN_END => Record::Run(RunChange::End {
                id: r.str()?,
                exit_code: r
                    .opt_i64()?
                    .map(|n| i32::try_from(n).map_err(|_| format!("exit code {n} out of range")))
                    .transpose()?,
                at: r.str()?,
            }),
            other => return Err(format!("unknown record type {other}")),
        };
        if !r.0.is_empty() {
            return Err(format!("{} trailing bytes in a record", r.0.len()));
        }
        Ok(record)
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("record ends early".to_owned());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn i64(&mut self) -> Result<i64, String> {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(bytes))
    }
    fn str(&mut self) -> Result<String, String> {
        let mut len = [0u8; 4];
        len.copy_from_slice(self.take(4)?);
        let bytes = self.take(u32::from_le_bytes(len) as usize)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "text is not UTF-8".to_owned())
    }
    fn opt_str(&mut self) -> Result<Option<String>, String> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            other => Err(format!("bad option flag {other}")),
        }
    }
    fn opt_i64(&mut self) -> Result<Option<i64>, String> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.i64().map(Some),
            other => Err(format!("bad option flag {other}")),
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let slice = bytes.get(at..at + 4)?;
    let mut b = [0u8; 4];
    b.copy_from_slice(slice);
    Some(u32::from_le_bytes(b))
}

/// What is at the start of `bytes`: a whole frame and its length, not enough bytes yet, or
/// something that is not a frame.
pub(crate) enum Parsed {
    Frame(Record, usize),
    Incomplete,
    Invalid(String),
}

pub(crate) fn parse_frame(bytes: &[u8]) -> Parsed {
    let (Some(len), Some(crc)) = (u32_at(bytes, 0), u32_at(bytes, 4)) else {
        return Parsed::Incomplete;
    };
    let len = len as usize;
    if len > MAX_PAYLOAD {
        return Parsed::Invalid(format!("frame length {len} past the limit"));
    }
    let total = len + FRAME_OVERHEAD;
    if bytes.len() < total {
        return Parsed::Incomplete;
    }
    let payload = &bytes[8..8 + len];
    if crc32fast::hash(payload) != crc {
        return Parsed::Invalid("checksum mismatch".to_owned());
    }
    if u32_at(bytes, 8 + len) != Some(len as u32) {
        return Parsed::Invalid("trailing length mismatch".to_owned());
    }
    match Record::decode(payload) {
        Ok(record) => Parsed::Frame(record, total),
        Err(reason) => Parsed::Invalid(reason),
    }
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// The segment directory of the journal at `db`: `journal.db.segments`.
pub fn segments_dir(db: &Path) -> PathBuf {
    let mut dir = db.as_os_str().to_owned();
    dir.push(".segments");
    PathBuf::from(dir)
}

pub(crate) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.log"))
}

/// The segments in `dir`, by number (an absent directory has none).
pub(crate) fn list(dir: &Path) -> Result<Vec<u64>, SegmentError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut numbers = Vec::new();
    for entry in entries {
        let name = entry.map_err(io_err(dir))?.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        numbers.push(number);
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Reads a whole segment's frames, stopping at the first that does not parse. Returns the
/// records with their end offsets, and the problem at the end if any (a torn tail or
/// corruption: the caller decides which).
pub(crate) fn read_segment(path: &Path) -> Result<SegmentScan, SegmentError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    Ok(scan(&bytes, 0))
}

pub(crate) struct SegmentScan {
    pub records: Vec<(Record, u64)>,
    /// End of the last whole frame.
    pub end: u64,
    /// Length of what was read.
    pub len: u64,
    /// Why the scan stopped before `len`.
    pub problem: Option<String>,
}

fn scan(bytes: &[u8], base: u64) -> SegmentScan {
    let mut at = 0usize;
    let mut records = Vec::new();
    let mut problem = None;
    while at < bytes.len() {
        match parse_frame(&bytes[at..]) {
            Parsed::Frame(record, n) => {
                at += n;
                records.push((record, base + at as u64));
            }
            Parsed::Incomplete => {
                problem = Some("a frame ends early".to_owned());
                break;
            }
            Parsed::Invalid(reason) => {
                problem = Some(reason);
                break;
            }
        }
    }
    SegmentScan {
        records,
        end: base + at as u64,
        len: base + bytes.len() as u64,
        problem,
    }
}

fn flock(file: &File, path: &Path, operation: libc::c_int) -> Result<(), SegmentError> {
    loop {
        // SAFETY: flock on a file descriptor this `File` owns; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(io_err(path)(e));
        }
    }
}

fn open_segment(path: &Path) -> Result<File, SegmentError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .open(path)
        .map_err(io_err(path))
}

/// This process's writer on the log. One per `Journal`; the journal's commit lock serialises
/// its use within the process, the segment's `flock` across processes.
pub(crate) struct SegmentLog {
    dir: PathBuf,
    sync: JournalSync,
    number: u64,
    file: File,
    /// The active segment's length after this writer's last write or read of it; `None` forces
    /// a re-read of the tail.
    known_len: Option<u64>,
    head: Head,
    /// [`SEGMENT_BYTES`], smaller in tests.
    segment_bytes: u64,
}

/// Where a write ended: the indexer has seen everything up to it once its position passes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

impl SegmentLog {
    /// Opens the log in `dir`, creating its first segment from `initial()` (the head of what
    /// the database already holds) if there is none, and repairing a torn tail.
    pub(crate) fn open(
        dir: &Path,
        sync: JournalSync,
        initial: impl FnOnce() -> Result<Head, String>,
    ) -> Result<SegmentLog, SegmentError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750));
        }
        let number = list(dir)?.last().copied().unwrap_or(1);
        let path = segment_path(dir, number);
        let file = open_segment(&path)?;
        let mut log = SegmentLog {
            dir: dir.to_owned(),
            sync,
            number,
            file,
            known_len: None,
            head: Head {
                next_seq: 0,
                last_hash: String::new(),
            },
            segment_bytes: SEGMENT_BYTES,
        };
        let mut initial = Some(initial);
        // The first open of an empty log writes its Start under the lock (another process
        // may be doing the same: whoever locks first writes it, the other reads it).
        log.locked(
            &mut || match initial.take() {
                Some(f) => f(),
                None => Err("no initial head".to_owned()),
            },
            |_| Ok(()),
        )?;
        Ok(log)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn unlock(&self) {
        // SAFETY: flock on a descriptor this `File` owns. Unlocking a valid descriptor cannot
        // fail, and closing it would release the lock anyway.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }

    /// Runs `f` with the active segment locked and `head` current; unlocks after it.
    fn locked<T>(
        &mut self,
        initial: &mut dyn FnMut() -> Result<Head, String>,
        f: impl FnOnce(&mut Self) -> Result<T, SegmentError>,
    ) -> Result<T, SegmentError> {
        self.lock(initial)?;
        let out = f(self);
        self.unlock();
        out
    }

    /// Takes the lock on the active segment and brings `head` up to date with its tail,
    /// following seals to the newest segment. `initial` gives the head for a segment that is
    /// still empty (only the very first one can be; the others start from a seal). Leaves the
    /// active segment locked on success, unlocked on error.
    fn lock(
        &mut self,
        initial: &mut dyn FnMut() -> Result<Head, String>,
    ) -> Result<(), SegmentError> {
        let mut sealed: Option<Head> = None;
        loop {
            let path = segment_path(&self.dir, self.number);
            flock(&self.file, &path, libc::LOCK_EX)?;
            match self.sync_tail(&path, &mut sealed, initial) {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    // Sealed by another writer: follow it to the next segment.
                    self.unlock();
                    self.number += 1;
                    self.file = open_segment(&segment_path(&self.dir, self.number))?;
                    self.known_len = None;
                }
                Err(e) => {
                    self.unlock();
                    return Err(e);
                }
            }
        }
    }

    /// Under the lock: reads the head from the tail if the file changed. `Ok(false)` when the
    /// segment is sealed (`sealed` then holds the head the next one starts from).
    fn sync_tail(
        &mut self,
        path: &Path,
        sealed: &mut Option<Head>,
        initial: &mut dyn FnMut() -> Result<Head, String>,
    ) -> Result<bool, SegmentError> {
        let len = self.file.metadata().map_err(io_err(path))?.len();
        if Some(len) == self.known_len {
            return Ok(true);
        }
        if len == 0 {
            let head = match sealed.take() {
                Some(head) => head,
                None => initial().map_err(|reason| SegmentError::Corrupt {
                    path: path.to_owned(),
                    offset: 0,
                    reason,
                })?,
            };
            self.head = head.clone();
            self.known_len = Some(0);
            self.write_locked(&Record::Start(head).framed())?;
            return Ok(true);
        }
        let (last, end) = self.read_tail(path, len)?;
        self.known_len = Some(end);
        match last {
            Record::Seal(head) => {
                *sealed = Some(head);
                return Ok(false);
            }
            Record::Start(head) => self.head = head,
            Record::Event(e) => {
                self.head = Head {
                    next_seq: e.seq + 1,
                    last_hash: e.hash,
                }
            }
            Record::Run(_) => {
                return Err(SegmentError::Corrupt {
                    path: path.to_owned(),
                    offset: end,
                    reason: "no chain head found before the tail".to_owned(),
                })
            }
        }
        Ok(true)
    }

    /// The last record that tells the chain head (skipping run records backwards), and where
    /// the valid part of the segment ends; cuts off a torn tail. Called under the lock.
    fn read_tail(&mut self, path: &Path, len: u64) -> Result<(Record, u64), SegmentError> {
        // Fast path: walk back over whole frames from the end.
        let mut end = len;
        while end >= FRAME_OVERHEAD as u64 {
            let mut trailer = [0u8; 4];
            self.file
                .read_exact_at(&mut trailer, end - 4)
                .map_err(io_err(path))?;
            let payload = u64::from(u32::from_le_bytes(trailer));
            let total = payload + FRAME_OVERHEAD as u64;
            if total > end || payload as usize > MAX_PAYLOAD {
                break;
            }
            let mut frame = vec![0u8; total as usize];
            self.file
                .read_exact_at(&mut frame, end - total)
                .map_err(io_err(path))?;
            match parse_frame(&frame) {
                Parsed::Frame(Record::Run(_), _) => end -= total,
                Parsed::Frame(record, _) => return Ok((record, len)),
                _ => break,
            }
        }
        // The end is not a whole frame (or only run records were found backwards): scan from
        // the start and cut off whatever follows the last whole frame.
        let scan = read_segment(path)?;
        let head_at = scan
            .records
            .iter()
            .rposition(|(r, _)| !matches!(r, Record::Run(_)));
        let (end, problem, len) = (scan.end, scan.problem, scan.len);
        let Some(record) = head_at.and_then(|i| scan.records.into_iter().nth(i).map(|(r, _)| r))
        else {
            return Err(SegmentError::Corrupt {
                path: path.to_owned(),
                offset: 0,
                reason: problem.unwrap_or_else(|| "no start record".to_owned()),
            });
        };
        if end < len {
            tracing::warn!(
                segment = %path.display(),
                valid = end,
                len,
                problem = problem.as_deref().unwrap_or(""),
                "cutting off a torn tail of the journal log (a write that was never acknowledged)"
            );
            self.file.set_len(end).map_err(io_err(path))?;
        }
        Ok((record, end))
    }

    fn write_locked(&mut self, bytes: &[u8]) -> Result<(), SegmentError> {
        let path = segment_path(&self.dir, self.number);
        let at = self.known_len.unwrap_or(0);
        if let Err(e) = self.file.write_all_at(bytes, at) {
            // Nothing of a failed write may stay: cut back to where it began (if even that
            // fails, the next writer finds a torn tail and cuts it).
            let _ = self.file.set_len(at);
            self.known_len = None;
            return Err(io_err(&path)(e));
        }
        if self.sync == JournalSync::Full {
            if let Err(e) = self.file.sync_data() {
                let _ = self.file.set_len(at);
                self.known_len = None;
                return Err(io_err(&path)(e));
            }
        }
        self.known_len = Some(at + bytes.len() as u64);
        Ok(())
    }

    /// Appends one group: `build` assigns sequence numbers from the head, frames its records
    /// into the buffer, and returns what the callers get; all of it is written with one
    /// `write(2)` under the lock, or none of it is (an error, and the head is as before).
    pub(crate) fn append<T>(
        &mut self,
        build: impl FnOnce(&mut Group<'_>) -> T,
    ) -> Result<(T, Position), SegmentError> {
        self.locked(&mut no_initial, |log| {
            if log.known_len.unwrap_or(0) >= log.segment_bytes {
                log.rotate()?;
            }
            log.append_locked(build)
        })
    }

    fn append_locked<T>(
        &mut self,
        build: impl FnOnce(&mut Group<'_>) -> T,
    ) -> Result<(T, Position), SegmentError> {
        let saved = self.head.clone();
        let mut buf = Vec::with_capacity(4096);
        let mut group = Group {
            head: &mut self.head,
            at: super::now_rfc3339(),
            buf: &mut buf,
        };
        let out = build(&mut group);
        if buf.is_empty() {
            return Ok((out, self.position()));
        }
        if let Err(e) = self.write_locked(&buf) {
            self.head = saved;
            return Err(e);
        }
        Ok((out, self.position()))
    }

    #[cfg(test)]
    pub(crate) fn set_segment_bytes(&mut self, bytes: u64) {
        self.segment_bytes = bytes;
    }

    /// The end of what this writer last saw of the log.
    pub(crate) fn position(&self) -> Position {
        Position {
            segment: self.number,
            offset: self.known_len.unwrap_or(0),
        }
    }

    /// Runs `f` with the log locked (no other writer, in this process or another, appends
    /// meanwhile) and its head current: for operations that must see the whole log first
    /// (prune, reindex). `f` may append through the [`Held`] it gets.
    pub(crate) fn with_lock<T>(
        &mut self,
        f: impl FnOnce(&mut Held<'_>) -> T,
    ) -> Result<T, SegmentError> {
        self.locked(&mut no_initial, |log| Ok(f(&mut Held { log })))
    }

    /// Seals the active segment (under its lock) and starts the next one, locked.
    fn rotate(&mut self) -> Result<(), SegmentError> {
        let head = self.head.clone();
        self.write_locked(&Record::Seal(head.clone()).framed())?;
        // From here on every writer follows the seal to the next segment; whoever locks it
        // first while it is empty writes its Start (see `sync_tail`).
        self.unlock();
        self.number += 1;
        self.file = open_segment(&segment_path(&self.dir, self.number))?;
        self.known_len = None;
        self.lock(&mut move || Ok(head.clone()))
    }
}

fn no_initial() -> Result<Head, String> {
    Err("the active segment is empty".to_owned())
}

/// The log, locked by [`SegmentLog::with_lock`].
pub(crate) struct Held<'a> {
    log: &'a mut SegmentLog,
}

impl Held<'_> {
    pub(crate) fn dir(&self) -> &Path {
        &self.log.dir
    }

    /// As [`SegmentLog::append`], without rotating (the caller holds the lock).
    pub(crate) fn append<T>(
        &mut self,
        build: impl FnOnce(&mut Group<'_>) -> T,
    ) -> Result<(T, Position), SegmentError> {
        self.log.append_locked(build)
    }
}

impl Record {
    fn framed(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.frame(&mut out);
        out
    }
}

/// A group being built under the lock: one time for all of it (taken after the lock, so times
/// follow sequence numbers across processes, which prune relies on).
pub(crate) struct Group<'a> {
    head: &'a mut Head,
    pub at: String,
    buf: &'a mut Vec<u8>,
}

/// The content of an event to append; the log adds its sequence number, time and hashes.
pub(crate) struct NewEvent<'a> {
    pub session_id: Option<i64>,
    pub kind: &'a str,
    pub statement: Option<&'a str>,
    pub decision: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub detail: String,
    pub hint: IndexHint,
}

impl Group<'_> {
    /// The sequence number the next event gets.
    pub(crate) fn next_seq(&self) -> i64 {
        self.head.next_seq
    }

    /// Appends an event as the next link of the chain and returns its sequence number.
    pub(crate) fn event(&mut self, e: NewEvent<'_>) -> i64 {
        let seq = self.head.next_seq;
        let content = ChainedContent {
            id: seq,
            session_id: e.session_id,
            at: &self.at,
            kind: e.kind,
            statement: e.statement,
            decision: e.decision,
            rule: e.rule,
            detail: &e.detail,
        };
        let hash = event_hash_hex(&self.head.last_hash, &content);
        // Hex digits: always ASCII.
        let hash = std::str::from_utf8(&hash).unwrap_or_default();
        let view = EventView {
            content,
            prev_hash: &self.head.last_hash,
            hash,
            hint: &e.hint,
        };
        frame_with(self.buf, |out| view.encode(&mut Writer(out)));
        self.head.next_seq = seq + 1;
        // In place: the head's string keeps its capacity from link to link.
        self.head.last_hash.clear();
        self.head.last_hash.push_str(hash);
        seq
    }

    pub(crate) fn run(&mut self, change: RunChange) {
        Record::Run(change).frame(self.buf);
    }
}

#[cfg(test)]
mod tests;
