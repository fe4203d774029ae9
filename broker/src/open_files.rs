//! The process's limit on open files: every connection holds a file descriptor, so a
//! broker meant for 10,000 devices cannot live under the usual soft limit of 1,024.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors the process needs besides the connections' (its database, logs, the
/// listeners, the HTTP side's sockets).
pub const SPARE: u64 = 256;

/// What [`raise`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit before (`None`: unlimited).
    pub was: Option<u64>,
    /// The soft limit now.
    pub now: Option<u64>,
    /// What was asked for: `connections` + [`SPARE`].
    pub needed: u64,
}

impl OpenFiles {
    /// Whether the soft limit now leaves room for what was asked.
    pub fn enough(&self) -> bool {
        self.now.is_none_or(|now| now >= self.needed)
    }
}

/// Raises the soft limit on open files to the hard limit (a process may do so without
/// privileges), and warns when even that is short of `connections` plus [`SPARE`]:
/// connections past it would fail to be accepted.
pub fn raise(connections: usize) -> OpenFiles {
    let needed = u64::try_from(connections)
        .unwrap_or(u64::MAX)
        .saturating_add(SPARE);
    let limit = getrlimit(Resource::Nofile);
    let was = limit.current;
    let mut now = was;
    if limit.current != limit.maximum {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        ) {
            Ok(()) => now = limit.maximum,
            Err(error) => tracing::debug!("cannot raise the open files limit: {error}"),
        }
    }
    let found = OpenFiles { was, now, needed };
    if !found.enough() {
        tracing::warn!(
            "the open files limit is {} (hard limit {}), below the {needed} that {connections} \
             connections need: connections past about {} will fail; raise the hard limit \
             (systemd LimitNOFILE=, or ulimit -Hn as root) or lower the connection limit",
            now.map_or_else(|| "unlimited".into(), |n| n.to_string()),
            limit
                .maximum
                .map_or_else(|| "unlimited".into(), |n| n.to_string()),
            now.unwrap_or(0).saturating_sub(SPARE),
        );
    } else if was != now {
        tracing::debug!("raised the open files limit from {was:?} to {now:?}");
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let found = raise(10);
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(limit.current, limit.maximum);
        assert_eq!(found.now, limit.current);
        assert!(found.enough());
        assert!(!raise(usize::MAX).enough() || limit.current.is_none());
    }
}
