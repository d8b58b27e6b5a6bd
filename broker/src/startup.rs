//! Start-up checks whose failures would otherwise say nothing useful: each error names the
//! cause, the setting or path involved, and the fix.
//!
//! - [`check_memlock`]: glommio registers [`IO_MEMORY_BYTES`](crate::server) of io_uring
//!   buffers per executor in locked memory; below that RLIMIT_MEMLOCK every shard thread
//!   dies before it is ready, and all the broker could say was "a shard stopped during start".
//! - [`data_dir_error`]: an I/O error on the data dir, with the path and what to do about
//!   permissions, a read-only file system or a full disk.
//!
//! What this module must never do: change a limit or a permission itself (the operator
//! decides), or refuse a start that would have worked (it checks only what is known to fail).
//!
//! ```
//! use shardlog::startup::memlock_problem;
//!
//! assert!(memlock_problem(Some(64 << 10), 512 << 10).unwrap().contains("ulimit -l"));
//! assert!(memlock_problem(Some(8 << 20), 512 << 10).is_none());
//! assert!(memlock_problem(None, 512 << 10).is_none()); // unlimited
//! ```

use std::path::Path;

/// Why `limit_bytes` of locked memory (None: unlimited) cannot hold `needed_bytes` of
/// registered io_uring buffers per executor, with the fix; None if it can.
pub fn memlock_problem(limit_bytes: Option<u64>, needed_bytes: usize) -> Option<String> {
    let limit = limit_bytes?;
    if limit >= needed_bytes as u64 {
        return None;
    }
    let needed_kib = needed_bytes.div_ceil(1024);
    Some(format!(
        "memlock: the locked-memory limit (RLIMIT_MEMLOCK) is {} KiB, but each shard's \
         io_uring executor registers {needed_kib} KiB of buffers in locked memory. Raise it: \
         `ulimit -l {needed_kib}` (or `ulimit -l unlimited`) in the shell that starts \
         shardlog, LimitMEMLOCK=infinity in its systemd unit (see deploy/shardlog.service), \
         or a `memlock` line in /etc/security/limits.conf",
        limit / 1024
    ))
}

/// The soft RLIMIT_MEMLOCK of this process in bytes; None if unlimited or unknown.
fn memlock_limit_bytes() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other effect.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Refuses to start when the memlock limit is too low for one executor's buffers.
pub fn check_memlock(io_memory_bytes: usize) -> anyhow::Result<()> {
    match memlock_problem(memlock_limit_bytes(), io_memory_bytes) {
        Some(problem) => Err(anyhow::anyhow!(problem)),
        None => Ok(()),
    }
}

/// An error of `action` ("create", "lock", ...) on `path` in the data dir, naming the path,
/// the cause and the fix.
pub fn data_dir_error(action: &str, path: &Path, e: std::io::Error) -> anyhow::Error {
    let fix = match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            format!(
                "the user running shardlog (uid {uid}) may not write there: give it the \
                 directory (chown -R {uid} DIR, or StateDirectory= in the systemd unit), or \
                 choose another --data-dir"
            )
        }
        Some(libc::EROFS) => "its file system is mounted read-only: remount it read-write \
                              (mount -o remount,rw), or choose another --data-dir"
            .to_string(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            "its file system is full: free space or choose another --data-dir".to_string()
        }
        _ => "check the path and its file system, or choose another --data-dir".to_string(),
    };
    anyhow::anyhow!("data_dir: cannot {action} {}: {e}; {fix}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_file_system_and_a_permission_error_each_name_path_and_fix() {
        let path = Path::new("/srv/shardlog");
        let ro = data_dir_error(
            "create",
            path,
            std::io::Error::from_raw_os_error(libc::EROFS),
        );
        assert!(ro.to_string().contains("/srv/shardlog"), "{ro}");
        assert!(ro.to_string().contains("read-only"), "{ro}");
        let denied = data_dir_error(
            "lock",
            path,
            std::io::Error::from_raw_os_error(libc::EACCES),
        );
        assert!(denied.to_string().contains("chown"), "{denied}");
    }
}
