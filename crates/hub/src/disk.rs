//! Free space and the "disk full" error: a 3 GiB checkpoint should fail before it starts,
//! not after an hour, and say which folder needs room and how much.

use std::io;
use std::path::Path;

/// Bytes available to this user on the filesystem holding `path` (or its nearest existing
/// ancestor), where the platform tells.
pub fn available_space(path: &Path) -> Option<u64> {
    // A relative path's last ancestor is "", which names the working directory.
    let existing = path
        .ancestors()
        .find(|p| !p.as_os_str().is_empty() && p.exists())
        .unwrap_or(Path::new("."));
    available_space_of_existing(existing)
}

#[cfg(unix)]
fn available_space_of_existing(path: &Path) -> Option<u64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and `stats` is a valid out-pointer; statvfs only
    // writes to it, and we read it only when the call reports success.
    let stats = unsafe {
        if libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) != 0 {
            return None;
        }
        stats.assume_init()
    };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Some((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}

#[cfg(not(unix))]
fn available_space_of_existing(_path: &Path) -> Option<u64> {
    None
}

/// Whether a write failed because the disk (or quota) is full.
pub fn is_disk_full(error: &io::Error) -> bool {
    if error.kind() == io::ErrorKind::StorageFull || error.kind() == io::ErrorKind::QuotaExceeded {
        return true;
    }
    #[cfg(unix)]
    {
        matches!(
            error.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        )
    }
    #[cfg(not(unix))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_space_for_a_path_not_yet_created() {
        let dir = tempfile::tempdir().unwrap();
        let space = available_space(&dir.path().join("not/yet/there"));
        assert!(space.is_some_and(|s| s > 0));
    }

    #[test]
    fn reports_space_for_a_relative_path_not_yet_created() {
        assert!(available_space(Path::new("no-such-folder/below")).is_some_and(|s| s > 0));
    }

    #[test]
    fn recognises_enospc() {
        assert!(is_disk_full(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(!is_disk_full(&io::Error::from(io::ErrorKind::NotFound)));
    }
}
