//! Accepting TCP connections the same way in every accept loop (the LB's listeners, the
//! broker's listeners, the cluster's node channel): an accept error either means the process is
//! out of a resource, and the loop backs off instead of spinning, or it belongs to one connection
//! that failed before it was accepted, and the loop skips it. Either way the log names the errno.
//! Every loop is `while let Some((tcp, peer)) = accept(&listener, &mut stop, name).await { .. }`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The next accepted connection, or `None` once `stop` changes (or its sender is gone). Accept
/// errors are handled here ([`accept_failed`]) and never end the loop.
pub async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
    name: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.changed() => return None,
            a = listener.accept() => match a {
                Ok(conn) => return Some(conn),
                Err(e) => accept_failed(name, &e).await,
            },
        }
    }
}

/// How long the loop waits after running out of file descriptors, buffers or memory: long enough
/// for connections to close, short enough that the kernel backlog does not overflow.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What an accept error means for the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptFailure {
    /// The process or the system is out of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM): accepting
    /// again at once would fail again, so back off.
    OutOfResources(&'static str),
    /// One connection failed between the handshake and `accept` (ECONNABORTED, EPROTO, EPERM,
    /// ...): nothing is wrong with the listener, so go on.
    Connection(&'static str),
}

impl AcceptFailure {
    /// Sorts an `accept()` error, with the errno's name for the log.
    pub fn of(e: &io::Error) -> AcceptFailure {
        match e.raw_os_error() {
            Some(libc::EMFILE) => AcceptFailure::OutOfResources("EMFILE"),
            Some(libc::ENFILE) => AcceptFailure::OutOfResources("ENFILE"),
            Some(libc::ENOBUFS) => AcceptFailure::OutOfResources("ENOBUFS"),
            Some(libc::ENOMEM) => AcceptFailure::OutOfResources("ENOMEM"),
            Some(libc::ECONNABORTED) => AcceptFailure::Connection("ECONNABORTED"),
            Some(libc::ECONNRESET) => AcceptFailure::Connection("ECONNRESET"),
            Some(libc::EPROTO) => AcceptFailure::Connection("EPROTO"),
            Some(libc::EPERM) => AcceptFailure::Connection("EPERM"),
            Some(libc::EINTR) => AcceptFailure::Connection("EINTR"),
            Some(libc::ETIMEDOUT) => AcceptFailure::Connection("ETIMEDOUT"),
            _ => AcceptFailure::Connection("other"),
        }
    }
}

/// What an accept loop does with an `accept()` error: out of resources, it logs a warning naming
/// the errno and waits [`ACCEPT_BACKOFF`]; a failed connection is logged at debug and skipped at
/// once. Either way the loop goes on accepting. `listener` labels the log lines.
pub async fn accept_failed(listener: &str, e: &io::Error) {
    match AcceptFailure::of(e) {
        AcceptFailure::OutOfResources(errno) => {
            tracing::warn!(listener, errno, error = %e, "accept failed: out of resources, backing off 100ms");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
        AcceptFailure::Connection(errno) => {
            tracing::debug!(listener, errno, error = %e, "accept failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_errors_back_off_and_connection_errors_are_skipped() {
        let of = |n| AcceptFailure::of(&io::Error::from_raw_os_error(n));
        assert_eq!(of(libc::EMFILE), AcceptFailure::OutOfResources("EMFILE"));
        assert_eq!(of(libc::ENFILE), AcceptFailure::OutOfResources("ENFILE"));
        assert_eq!(of(libc::ENOBUFS), AcceptFailure::OutOfResources("ENOBUFS"));
        assert_eq!(of(libc::ENOMEM), AcceptFailure::OutOfResources("ENOMEM"));
        assert_eq!(
            of(libc::ECONNABORTED),
            AcceptFailure::Connection("ECONNABORTED")
        );
        assert_eq!(of(libc::EPROTO), AcceptFailure::Connection("EPROTO"));
        assert_eq!(of(libc::EINVAL), AcceptFailure::Connection("other"));
        let no_errno = io::Error::other("not from the OS");
        assert_eq!(
            AcceptFailure::of(&no_errno),
            AcceptFailure::Connection("other")
        );
    }

    #[tokio::test]
    async fn only_resource_errors_back_off() {
        let t0 = std::time::Instant::now();
        accept_failed("test", &io::Error::from_raw_os_error(libc::ECONNABORTED)).await;
        assert!(t0.elapsed() < ACCEPT_BACKOFF);
        let t0 = std::time::Instant::now();
        accept_failed("test", &io::Error::from_raw_os_error(libc::EMFILE)).await;
        assert!(t0.elapsed() >= ACCEPT_BACKOFF);
    }
}
