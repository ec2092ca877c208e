//! The one thing an in-memory node keeps on disk: how many times it has started.

use raft_core::Incarnation;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// Bytes of the counter file: the next incarnation, a decimal number and a newline. A file
/// longer than this is not ours.
const COUNTER_FILE_BYTES_MAX: u64 = 32;

/// Takes the incarnation this run of an in-memory node starts in, from the counter file at
/// `path`, and makes the next one durable before returning: 0 on the very first start (no
/// file yet), then 1, 2, ... A crash after the write only skips a number, which is harmless;
/// the counter never repeats one, so every run is a life of its own
/// ([`raft_core::Config::incarnation`]).
///
/// The new count is written to a temporary file beside `path`, synced, renamed over it and the
/// folder synced, so a crash leaves either the old count or the new one. A file that does not
/// hold a count is refused (`InvalidData`) rather than reset: a node that cannot tell its lives
/// apart must not start.
///
/// ```
/// use raft_core::Incarnation;
/// use raft_storage_mem::take_incarnation;
///
/// let folder = std::env::temp_dir().join(format!("incarnation-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&folder)?;
/// let counter = folder.join("incarnation");
/// # let _ = std::fs::remove_file(&counter);
/// assert_eq!(take_incarnation(&counter)?, Incarnation(0)); // first start: bootstraps
/// assert_eq!(take_incarnation(&counter)?, Incarnation(1)); // a restart: a new life
/// # std::fs::remove_dir_all(&folder)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn take_incarnation(path: &Path) -> io::Result<Incarnation> {
    let current = match File::open(path) {
        Ok(file) => read_count(file, path)?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
        Err(error) => return Err(error),
    };
    let next = current.checked_add(1).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: the incarnation counter is exhausted", path.display()),
        )
    })?;
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    let temporary = path.with_extension("next");
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)?;
        writeln!(file, "{next}")?;
        file.sync_all()?;
    }
    fs::rename(&temporary, path)?;
    File::open(folder)?.sync_all()?;
    Ok(Incarnation(current))
}

fn read_count(file: File, path: &Path) -> io::Result<u64> {
    let mut text = String::new();
    file.take(COUNTER_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)?;
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} does not hold an incarnation count (a decimal number): refusing to start \
                 a node that cannot tell its lives apart",
                path.display()
            ),
        )
    };
    if text.len() as u64 > COUNTER_FILE_BYTES_MAX {
        return Err(invalid());
    }
    text.trim().parse().map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str) -> std::path::PathBuf {
        let folder = std::env::temp_dir().join(format!("raft-mem-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&folder);
        fs::create_dir_all(&folder).unwrap();
        folder
    }

    #[test]
    fn every_start_takes_a_new_incarnation() {
        let folder = folder("counts");
        let counter = folder.join("incarnation");
        let lives: Vec<u64> = (0..4)
            .map(|_| take_incarnation(&counter).unwrap().0)
            .collect();
        assert_eq!(lives, [0, 1, 2, 3]);
        assert_eq!(fs::read_to_string(&counter).unwrap(), "4\n");
        fs::remove_dir_all(folder).unwrap();
    }

    #[test]
    fn a_file_that_holds_no_count_is_refused_and_kept() {
        let folder = folder("garbage");
        let counter = folder.join("incarnation");
        fs::write(&counter, "not a number\n").unwrap();
        let error = take_incarnation(&counter).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(fs::read_to_string(&counter).unwrap(), "not a number\n");
        fs::write(&counter, "7".repeat(100)).unwrap();
        assert_eq!(
            take_incarnation(&counter).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        fs::remove_dir_all(folder).unwrap();
    }
}
