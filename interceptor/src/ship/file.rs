//! `type = "file"`: NDJSON on local disk, for a log shipper (Vector, Fluent Bit) to tail.
//!
//! A batch is acknowledged once it is written and `fdatasync`ed, so the cursor never runs
//! ahead of the disk. The live file rotates at record boundaries before it would pass
//! `max_bytes` (`path` → `path.1` → … → `path.<keep>`, the oldest dropped): a record is
//! never split across files, and rotation itself neither repeats nor drops one. If a write
//! fails half-way, the file is cut back to its last synced length, so a reader never sees a
//! torn line; the batch is then sent again. If something else moves or deletes the live file
//! (logrotate), the next batch notices and opens a new one at `path`.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use super::{config::FileSink, Record, Sink, SinkError};

pub(crate) struct FileOut {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    live: Option<Live>,
    buf: Vec<u8>,
}

struct Live {
    file: File,
    /// Bytes in the file, including unsynced ones.
    size: u64,
    /// Bytes known to be on disk: the length to cut back to after a failed write.
    synced: u64,
}

impl FileOut {
    /// Opens (creating) the live file now, so a bad path stops the daemon at start-up.
    pub fn open(config: &FileSink) -> Result<FileOut, SinkError> {
        let mut out = FileOut {
            path: config.path.clone(),
            max_bytes: config.max_bytes,
            keep: config.keep,
            live: None,
            buf: Vec::with_capacity(1 << 20),
        };
        if let Some(dir) = out.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| out.error(e))?;
        }
        out.live = Some(out.open_live()?);
        Ok(out)
    }

    fn error(&self, source: std::io::Error) -> SinkError {
        SinkError::File {
            path: self.path.clone(),
            source,
        }
    }

    fn open_live(&self) -> Result<Live, SinkError> {
        // Events say who did what: readable by the owner and its group, like the journal.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)
            .map_err(|e| self.error(e))?;
        let size = file.metadata().map_err(|e| self.error(e))?.len();
        Ok(Live {
            file,
            size,
            synced: size,
        })
    }

    /// True when `path` is still the file we hold open.
    fn still_at_path(&self, live: &Live) -> bool {
        match (std::fs::metadata(&self.path), live.file.metadata()) {
            (Ok(at_path), Ok(held)) => at_path.dev() == held.dev() && at_path.ino() == held.ino(),
            _ => false,
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Shifts the rotated files up by one (dropping the oldest) and moves the live file to
    /// `path.1`. The live file must be synced first.
    fn rotate(&mut self) -> Result<(), SinkError> {
        self.live = None;
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1)).map_err(|e| self.error(e))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1)).map_err(|e| self.error(e))?;
        sync_dir(&self.path);
        self.live = Some(self.open_live()?);
        Ok(())
    }

    /// Writes the buffer to the live file and syncs it.
    fn write_out(&mut self) -> Result<(), SinkError> {
        let Some(live) = self.live.as_mut().filter(|_| !self.buf.is_empty()) else {
            return Ok(());
        };
        let result = live
            .file
            .write_all(&self.buf)
            .and_then(|()| live.file.sync_data());
        live.size += self.buf.len() as u64;
        self.buf.clear();
        match result {
            Ok(()) => {
                live.synced = live.size;
                Ok(())
            }
            Err(e) => {
                // Cut the torn tail off so the file stays whole lines; reopen next time.
                let _ = live.file.set_len(live.synced);
                self.live = None;
                Err(self.error(e))
            }
        }
    }

    fn deliver(&mut self, records: &[Record]) -> Result<(), SinkError> {
        let reopen = match &self.live {
            Some(live) => !self.still_at_path(live),
            None => true,
        };
        if reopen {
            self.live = Some(self.open_live()?);
        }
        self.buf.clear();
        for r in records {
            let len = r.line.len() as u64 + 1;
            let size = self.live.as_ref().map_or(0, |l| l.size) + self.buf.len() as u64;
            // A record larger than max_bytes still gets a file of its own.
            if size > 0 && size + len > self.max_bytes {
                self.write_out()?;
                self.rotate()?;
            }
            self.buf.extend_from_slice(r.line.as_bytes());
            self.buf.push(b'\n');
        }
        self.write_out()
    }
}

impl Sink for FileOut {
    fn send(&mut self, records: &[Record]) -> Result<usize, SinkError> {
        self.deliver(records).map(|()| records.len())
    }
}

/// Makes a rename durable. Best effort: the data itself is already synced.
fn sync_dir(path: &Path) {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_owned(),
        None => PathBuf::from("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
