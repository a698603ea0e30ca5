//! `udptrace watch --log FILE`: a file that is rotated at a size and reopened on SIGHUP, for a
//! process meant to run for days.
//!
//! Both happen at a flush: the JSON output flushes between records, never inside one, so each
//! file holds whole lines. A file may therefore pass its size by what one drain wrote.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    file: File,
    /// Bytes in the current file, those it had when opened included.
    written: u64,
    /// Set by the SIGHUP handler: reopen `path` at the next flush.
    reopen: Arc<AtomicBool>,
}

fn open_append(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

impl RotatingLog {
    /// Opens `path` for appending (created if missing); `reopen` is the flag SIGHUP sets.
    pub fn open(path: &Path, max_bytes: u64, reopen: Arc<AtomicBool>) -> io::Result<Self> {
        let (file, written) = open_append(path)?;
        Ok(Self {
            path: path.to_owned(),
            max_bytes,
            file,
            written,
            reopen,
        })
    }

    /// `FILE.1`, where a full file goes.
    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".1");
        PathBuf::from(name)
    }

    fn reopen(&mut self) -> io::Result<()> {
        (self.file, self.written) = open_append(&self.path)?;
        Ok(())
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.reopen.swap(false, Ordering::Relaxed) {
            self.reopen()?;
        }
        if self.written >= self.max_bytes {
            // rename(2) replaces the previous FILE.1 at once.
            std::fs::rename(&self.path, Self::rotated_path(&self.path))?;
            self.reopen()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("udptrace-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rotates_at_the_size_between_lines_keeping_one_old_file() {
        let dir = scratch_dir("rotate");
        let path = dir.join("watch.ndjson");
        let mut log = RotatingLog::open(&path, 100, Arc::default()).unwrap();
        let line = format!("{}\n", "x".repeat(39));
        for round in 0..5 {
            log.write_all(line.as_bytes()).unwrap();
            log.write_all(format!("{round}\n").as_bytes()).unwrap();
            log.flush().unwrap();
        }
        // 42 bytes a round: the third flush passes 100 and rotates, the fourth and fifth fill
        // a new file (84 bytes, under the size).
        let current = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(RotatingLog::rotated_path(&path)).unwrap();
        assert_eq!(
            current.lines().filter(|l| l.len() == 1).count(),
            2,
            "{current}"
        );
        assert!(current.ends_with("4\n"), "{current}");
        assert_eq!(old.len(), 3 * 42, "{old}");
        assert!(old.ends_with("2\n"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reopens_after_the_file_was_moved_when_flagged() {
        let dir = scratch_dir("reopen");
        let path = dir.join("watch.ndjson");
        let flag = Arc::new(AtomicBool::new(false));
        let mut log = RotatingLog::open(&path, 1 << 20, Arc::clone(&flag)).unwrap();
        log.write_all(b"before\n").unwrap();
        log.flush().unwrap();
        let moved = dir.join("moved");
        std::fs::rename(&path, &moved).unwrap();
        // Until SIGHUP, writes follow the open file (as logrotate's `create` expects).
        log.write_all(b"still\n").unwrap();
        flag.store(true, Ordering::Relaxed);
        log.flush().unwrap();
        log.write_all(b"after\n").unwrap();
        log.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&moved).unwrap(), "before\nstill\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unwritable_path_fails_at_open() {
        let error = RotatingLog::open(Path::new("/no/such/dir/x"), 1 << 20, Arc::default())
            .err()
            .unwrap();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
