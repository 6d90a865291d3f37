//! The `sftp` subsystem, operation by operation: the agent's SFTP packets are framed, the ones
//! that open, change or remove files are judged as commands (`sftp read PATH`, `sftp write
//! PATH`, `sftp remove PATH`, `sftp rename OLD NEW`, `sftp mkdir PATH`, `sftp rmdir PATH`,
//! `sftp setstat PATH`, `sftp symlink LINK TARGET`, `sftp extended NAME`), and a refused one is
//! answered by the gateway with an SFTP status (permission denied, naming the rule and the
//! journal event) instead of reaching the server.
//!
//! Why per operation: "may this agent use sftp" is too coarse a question (a read of a log and
//! an overwrite of `/etc/passwd` are the same subsystem). The operations are described as
//! command words, so policy's existing `commands` patterns judge them (`sftp read **`).
//!
//! Handles are the server's names for open files: the gateway mirrors them from the server's
//! answers ([`Handles`]), so a change made through a handle (`fsetstat`) is judged, and shown
//! to an approver, with the path the handle was opened for.
//!
//! What passes unjudged: reads and writes on a handle already opened (the open was judged),
//! `close`, `stat`/`lstat`/`fstat`, `opendir`/`readdir`, `realpath`, `readlink`, and the
//! extensions that only read (`statvfs`, `limits`, `expand-path`, `home-directory`, `fsync`).
//! Packets are decoded (russh-sftp's protocol types) only when judged: handles are opaque
//! bytes, which russh-sftp would read as text.
//!
//! Both directions are relayed packet by packet, so an answer the gateway makes is never put
//! in the middle of one of the server's.

use bytes::{Bytes, BytesMut};
use russh_sftp::protocol::{OpenFlags, Packet, StatusCode};

use crate::command::SshRequest;

/// Largest SFTP packet either side may send: four times OpenSSH's `SFTP_MAX_MSG_LENGTH`
/// (256 KiB), for servers and clients that read and write in larger blocks, while one packet
/// still cannot make the gateway buffer without bound.
pub const MAX_PACKET: usize = 1024 * 1024;

const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const SETSTAT: u8 = 9;
const FSETSTAT: u8 = 10;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const RENAME: u8 = 18;
const SYMLINK: u8 = 20;
const EXTENDED: u8 = 200;
/// The server's answers the gateway reads: a status ends a request, a handle answers an open.
const STATUS: u8 = 101;
const HANDLE: u8 = 102;

/// How many opens in flight, and handles open, are remembered per channel; past it a handle is
/// not mirrored and a change through it is judged as made to `(open file)`.
const MAX_HANDLES: usize = 4096;

/// The server's file handles, mirrored from its answers: the path each was opened for.
#[derive(Debug, Default)]
pub struct Handles {
    /// Opens forwarded and not yet answered, by request id.
    asked: std::collections::HashMap<u32, String>,
    open: std::collections::HashMap<Vec<u8>, String>,
}

impl Handles {
    /// One of the agent's packets on its way to the server: an open is remembered until the
    /// server answers it, a close forgets its handle.
    pub fn forwarded(&mut self, packet: &[u8], words: Option<&[String]>) {
        match packet.get(4) {
            Some(&OPEN) => {
                if let (Some(id), Some(path)) = (request_id(packet), words.and_then(|w| w.get(2))) {
                    if self.asked.len() < MAX_HANDLES {
                        self.asked.insert(id, path.clone());
                    }
                }
            }
            Some(&CLOSE) => {
                if let Some(handle) = string_at(packet, 9) {
                    self.open.remove(handle);
                }
            }
            _ => {}
        }
    }

    /// One of the server's packets: the handle it gives an open, or the status that ends it.
    pub fn answered(&mut self, packet: &[u8]) {
        let Some(id) = request_id(packet) else { return };
        match packet.get(4) {
            Some(&HANDLE) => {
                if let (Some(path), Some(handle)) = (self.asked.remove(&id), string_at(packet, 9)) {
                    if self.open.len() < MAX_HANDLES {
                        self.open.insert(handle.to_vec(), path);
                    }
                }
            }
            Some(&STATUS) => {
                self.asked.remove(&id);
            }
            _ => {}
        }
    }

    /// The path `handle` was opened for, when the server gave it.
    pub fn path(&self, handle: &[u8]) -> Option<&str> {
        self.open.get(handle).map(String::as_str)
    }
}

/// A packet's request id (after its length and type).
fn request_id(packet: &[u8]) -> Option<u32> {
    packet
        .get(5..9)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The SSH string (length-prefixed bytes) at `at`.
fn string_at(packet: &[u8], at: usize) -> Option<&[u8]> {
    let len = packet.get(at..at + 4)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    packet.get(at + 4..(at + 4).checked_add(len)?)
}

/// Extensions that only read, passed unjudged.
const READ_EXTENSIONS: &[&str] = &[
    "statvfs@openssh.com",
    "fstatvfs@openssh.com",
    "limits@openssh.com",
    "expand-path@openssh.com",
    "home-directory",
    "users-groups-by-id@openssh.com",
    "fsync@openssh.com",
];

/// The SFTP stream broke (a packet too large, or one the gateway cannot read): the channel
/// ends.
#[derive(Debug, thiserror::Error)]
#[error("sftp: {0}")]
pub struct SftpError(pub String);

/// Cuts a byte stream into whole SFTP packets (length prefix included).
#[derive(Default)]
pub struct Framer {
    buf: BytesMut,
}

impl Framer {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole packet, if there is one.
    pub fn next_packet(&mut self) -> Result<Option<Bytes>, SftpError> {
        let Some(len) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len == 0 || len > MAX_PACKET {
            return Err(SftpError(format!("a packet of {len} bytes")));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(4 + len).freeze()))
    }

    /// Every whole packet there is, joined (for the direction that is only relayed).
    pub fn whole_packets(&mut self) -> Result<Vec<u8>, SftpError> {
        let mut out = Vec::new();
        while let Some(packet) = self.next_packet()? {
            out.extend_from_slice(&packet);
        }
        Ok(out)
    }
}

/// What to do with one of the agent's packets.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not an operation that is judged: forward it.
    Pass,
    /// Judge this operation (its request id, for the answer to a refusal).
    Judge { id: u32, words: Vec<String> },
    /// A judged kind of packet the gateway cannot read: refuse it (fail closed).
    Unreadable { id: u32, reason: String },
}

/// Reads one packet (length prefix included); `handles` name the files of `fsetstat`s.
pub fn classify(packet: &Bytes, handles: &Handles) -> Verdict {
    let Some(&kind) = packet.get(4) else {
        return Verdict::Pass;
    };
    if !matches!(
        kind,
        OPEN | SETSTAT | FSETSTAT | REMOVE | MKDIR | RMDIR | RENAME | SYMLINK | EXTENDED
    ) {
        return Verdict::Pass;
    }
    let id = request_id(packet).unwrap_or(0);
    let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    if kind == FSETSTAT {
        // By handle: the file it was opened for, as the server's answer to that open named
        // it; a handle the gateway did not see given is judged as `(open file)`.
        let path = string_at(packet, 9)
            .and_then(|h| handles.path(h))
            .unwrap_or("(open file)");
        return Verdict::Judge {
            id,
            words: words(&["sftp", "setstat", path]),
        };
    }
    let mut body = packet.slice(4..);
    let decoded = match Packet::try_from(&mut body) {
        Ok(p) => p,
        Err(e) => {
            return Verdict::Unreadable {
                id,
                reason: e.to_string(),
            }
        }
    };
    let judged = match decoded {
        Packet::Open(open) => {
            let writes = OpenFlags::WRITE
                | OpenFlags::APPEND
                | OpenFlags::CREATE
                | OpenFlags::TRUNCATE
                | OpenFlags::EXCLUDE;
            let mode = if open.pflags.intersects(writes) {
                "write"
            } else {
                "read"
            };
            words(&["sftp", mode, &open.filename])
        }
        Packet::SetStat(s) => words(&["sftp", "setstat", &s.path]),
        Packet::Remove(r) => words(&["sftp", "remove", &r.filename]),
        Packet::MkDir(m) => words(&["sftp", "mkdir", &m.path]),
        Packet::RmDir(r) => words(&["sftp", "rmdir", &r.path]),
        Packet::Rename(r) => words(&["sftp", "rename", &r.oldpath, &r.newpath]),
        Packet::Symlink(s) => words(&["sftp", "symlink", &s.linkpath, &s.targetpath]),
        Packet::Extended(e) if READ_EXTENSIONS.contains(&e.request.as_str()) => {
            return Verdict::Pass
        }
        Packet::Extended(e) => words(&["sftp", "extended", &e.request]),
        _ => return Verdict::Pass,
    };
    // russh-sftp reads names lossily: a name that is not UTF-8 would be judged as another.
    if judged
        .iter()
        .any(|w| w.contains(char::REPLACEMENT_CHARACTER))
    {
        return Verdict::Unreadable {
            id,
            reason: "a name that is not UTF-8".to_owned(),
        };
    }
    Verdict::Judge { id, words: judged }
}

/// The command an operation is judged as (see [`SshRequest::subsystem_operation`]).
pub fn request(words: &[String]) -> SshRequest {
    SshRequest::subsystem_operation("sftp", words.to_vec())
}

/// The status packet that answers a refused operation.
pub fn refusal(id: u32, message: &str) -> Result<Bytes, SftpError> {
    Bytes::try_from(Packet::status(
        id,
        StatusCode::PermissionDenied,
        message,
        "en",
    ))
    .map_err(|e| SftpError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use russh_sftp::protocol::{FileAttributes, Open, OpenFlags, Packet, Remove, Write};

    use super::*;

    fn bytes(p: Packet) -> Bytes {
        Bytes::try_from(p).expect("encode")
    }

    #[test]
    fn opens_are_reads_or_writes_and_handle_io_passes() {
        let open = |pflags| {
            bytes(Packet::Open(Open {
                id: 7,
                filename: "/srv/a b".to_owned(),
                pflags,
                attrs: FileAttributes::default(),
            }))
        };
        assert_eq!(
            classify(&open(OpenFlags::READ), &Handles::default()),
            Verdict::Judge {
                id: 7,
                words: vec!["sftp".into(), "read".into(), "/srv/a b".into()]
            }
        );
        let Verdict::Judge { words, .. } = classify(
            &open(OpenFlags::WRITE | OpenFlags::CREATE),
            &Handles::default(),
        ) else {
            panic!("judged");
        };
        assert_eq!(words[1], "write");
        assert_eq!(request(&words).canonical(), "sftp write '/srv/a b'");
        let remove = bytes(Packet::Remove(Remove {
            id: 9,
            filename: "/srv/x".to_owned(),
        }));
        assert!(matches!(
            classify(&remove, &Handles::default()),
            Verdict::Judge { id: 9, .. }
        ));
        let write = bytes(Packet::Write(Write {
            id: 3,
            handle: "h".to_owned(),
            offset: 0,
            data: vec![1, 2, 3],
        }));
        assert_eq!(classify(&write, &Handles::default()), Verdict::Pass);
    }

    #[test]
    fn fsetstat_names_the_file_its_handle_was_opened_for() {
        use russh_sftp::protocol::{Close, FSetStat, Handle, Status};
        let mut handles = Handles::default();
        let open = bytes(Packet::Open(Open {
            id: 4,
            filename: "/srv/up.txt".to_owned(),
            pflags: OpenFlags::WRITE | OpenFlags::CREATE,
            attrs: FileAttributes::default(),
        }));
        let Verdict::Judge { words, .. } = classify(&open, &handles) else {
            panic!("judged");
        };
        handles.forwarded(&open, Some(&words));
        let fsetstat = |id| {
            bytes(Packet::FSetStat(FSetStat {
                id,
                handle: "h-1".to_owned(),
                attrs: FileAttributes::default(),
            }))
        };
        let words_of = |v: Verdict| match v {
            Verdict::Judge { words, .. } => words.join(" "),
            other => panic!("{other:?}"),
        };
        // Before the server answers, the handle is unknown.
        assert_eq!(
            words_of(classify(&fsetstat(5), &handles)),
            "sftp setstat (open file)"
        );
        handles.answered(&bytes(Packet::Handle(Handle {
            id: 4,
            handle: "h-1".to_owned(),
        })));
        assert_eq!(
            words_of(classify(&fsetstat(6), &handles)),
            "sftp setstat /srv/up.txt"
        );
        // Closed: forgotten, as the server forgets it.
        let close = bytes(Packet::Close(Close {
            id: 7,
            handle: "h-1".to_owned(),
        }));
        handles.forwarded(&close, None);
        assert_eq!(
            words_of(classify(&fsetstat(8), &handles)),
            "sftp setstat (open file)"
        );
        // An open the server refused leaves nothing behind.
        handles.forwarded(&open, Some(&words));
        handles.answered(&bytes(Packet::Status(Status {
            id: 4,
            status_code: StatusCode::PermissionDenied,
            error_message: "no".to_owned(),
            language_tag: "en".to_owned(),
        })));
        assert!(handles.asked.is_empty() && handles.open.is_empty());
    }

    #[test]
    fn packets_are_framed_whole_and_oversized_ones_end_the_stream() {
        let remove = bytes(Packet::Remove(Remove {
            id: 1,
            filename: "/x".to_owned(),
        }));
        let mut framer = Framer::default();
        let mut stream = remove.to_vec();
        stream.extend_from_slice(&remove);
        framer.push(&stream[..5]);
        assert_eq!(framer.next_packet().expect("ok"), None);
        framer.push(&stream[5..]);
        assert_eq!(framer.next_packet().expect("ok"), Some(remove.clone()));
        assert_eq!(framer.whole_packets().expect("ok"), remove.to_vec());
        framer.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(framer.next_packet().is_err());
    }

    #[test]
    fn a_judged_packet_that_cannot_be_read_is_refused() {
        // An open whose name is not UTF-8.
        let mut packet = vec![0, 0, 0, 18, OPEN, 0, 0, 0, 5, 0, 0, 0, 1, 0xff];
        packet.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
        assert!(matches!(
            classify(&Bytes::from(packet), &Handles::default()),
            Verdict::Unreadable { id: 5, .. }
        ));
        let refused = refusal(5, "no").expect("status");
        let mut body = refused.slice(4..);
        assert!(matches!(
            Packet::try_from(&mut body),
            Ok(Packet::Status(s)) if s.id == 5
        ));
    }
}
