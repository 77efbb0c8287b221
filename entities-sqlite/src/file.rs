//! Noticing that the database file went away: deleted, or replaced by another file renamed
//! over it, while the store has it open.
//!
//! SQLite keeps writing to the file it opened whatever happens to its name: after `rm`, or a
//! `mv` of another file over it, every commit lands in a file that nothing can open again, and
//! is lost when the process ends. The writer checks, after each group commit and before it
//! answers, that the path still names the file it opened: the same device and inode. While the
//! writer's connection holds the file open, its inode cannot be reused, so a path that shows the
//! same inode shows the same file, still linked (`st_nlink` > 0). The `-wal` and `-shm` files
//! are not looked at: their names are derived from the path, and checkpoints never recreate
//! the database file, so neither can make this check fail or pass wrongly.
//!
//! The check is one `stat` of the path per group commit (on Unix; elsewhere, where an open
//! file can seldom be deleted, only that the path still exists).
//!
//! The `-wal` and `-shm` files stay at the path when the database file goes, and SQLite,
//! closing a database whose file moved, leaves them there: a database put at the path later
//! (a backup restored, or the empty one a restart creates) would be opened with the old
//! database's WAL, and read wrong. So the writer, once it notices, checkpoints the WAL into the
//! old file (still open) and removes the two files, if they are still the ones it opened (see
//! [`DbFile::remove_journals`]).

use std::path::{Path, PathBuf};

use entities_core::{StoreError, StoreErrorKind};

use crate::io_error;

/// The database file a store opened, as it was when opened.
#[derive(Debug)]
pub(crate) struct DbFile {
    /// The absolute path, so that a change of the working directory changes nothing.
    path: PathBuf,
    /// Its device and inode when opened (`None` where the platform has none).
    id: Option<(u64, u64)>,
    /// The `-wal` and `-shm` files as they were when opened, those that existed.
    journals: Vec<(PathBuf, Option<(u64, u64)>)>,
}

impl DbFile {
    /// The file at `path`, which the store has just opened.
    pub(crate) fn opened(path: &Path) -> Result<Self, StoreError> {
        let path = std::path::absolute(path).map_err(|e| {
            io_error(
                format!("cannot resolve the database path `{}`", path.display()),
                e,
            )
        })?;
        let meta = std::fs::metadata(&path).map_err(|e| {
            io_error(
                format!("cannot read the database file `{}`", path.display()),
                e,
            )
        })?;
        let journals = ["-wal", "-shm"]
            .into_iter()
            .filter_map(|suffix| {
                let mut name = path.as_os_str().to_owned();
                name.push(suffix);
                let journal = PathBuf::from(name);
                let meta = std::fs::metadata(&journal).ok()?;
                Some((journal, file_id(&meta)))
            })
            .collect();
        Ok(Self {
            id: file_id(&meta),
            path,
            journals,
        })
    }

    /// Removes the `-wal` and `-shm` files at the path that are still those of the database
    /// opened (on Unix; elsewhere nothing is removed), once it is gone: they belong to it, and
    /// a database put at the path would be read with them. Call it only once the WAL is
    /// checkpointed into the old file: what the WAL holds would be lost otherwise.
    pub(crate) fn remove_journals(&self) {
        for (journal, id) in &self.journals {
            let ours =
                id.is_some() && std::fs::metadata(journal).is_ok_and(|meta| file_id(&meta) == *id);
            if !ours {
                continue;
            }
            match std::fs::remove_file(journal) {
                Ok(()) => tracing::warn!(
                    file = %journal.display(),
                    "removed the file of a database whose file went away, so that no database \
                     put at its path is read with it"
                ),
                Err(e) => tracing::warn!(
                    file = %journal.display(),
                    error = %e,
                    "cannot remove the file of a database whose file went away; remove it \
                     before a database is opened at its path"
                ),
            }
        }
    }

    /// `Ok` if the path still names the file opened; an error of kind
    /// [`StoreErrorKind::Gone`] if it was deleted or replaced; of kind
    /// [`StoreErrorKind::Io`] if the path cannot be checked (nothing is acknowledged that
    /// could not be checked).
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if file_id(&meta) == self.id => Ok(()),
            Ok(_) => Err(self.gone(
                "was replaced by another file (renamed over it)",
                "start it again on the file now there, or put the old file back",
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.gone(
                "was deleted (or renamed away)",
                "start it again on a database file (restore the file from a backup if it was \
                 deleted by mistake)",
            )),
            Err(e) => Err(io_error(
                format!(
                    "cannot check that the database file `{}` is still there, so nothing more \
                     is written",
                    self.path.display()
                ),
                e,
            )),
        }
    }

    fn gone(&self, what: &str, fix: &str) -> StoreError {
        StoreError::of_kind(
            StoreErrorKind::Gone,
            format!(
                "the database file `{}` {what} while the store had it open: what is written now \
                 could never be read again, so the store writes nothing more and this write is \
                 not acknowledged; stop the runtime and {fix}",
                self.path.display()
            ),
        )
    }
}

/// The device and inode of a file.
#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

/// No stable file identity on this platform: only the existence of the path is checked.
#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}
