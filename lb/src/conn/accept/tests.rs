//! Memory budget of an idle forwarded connection.

use super::*;

fn size_of_return<A, R>(_: impl FnOnce(A) -> R) -> usize {
    std::mem::size_of::<R>()
}

/// The size of [`connection`]'s future for the real setup future type.
fn task_size<S, F>(_setup: S) -> usize
where
    S: FnOnce(Arc<Lb>, Arc<ListenerRt>, TcpStream, SocketAddr, Subscription) -> F,
    F: Future<Output = Option<Established>>,
{
    fn size3<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }
    size3(connection::<F>)
}

/// An idle established connection's task holds [`connection`]'s future, which holds the pump
/// ([`Established::run`]'s future, built from [`Established`]) once. Their sizes are held here
/// so that a new field in the pump's state is a decision, not an accident: each budget is a
/// little above the size measured on x86_64 with rustc 1.95, December 2026.
///
/// Measured before the issue-12 restructure: `Established` 224 bytes, its `run` future 344,
/// the spawned task's future 704 (the setup's `Option<Established>` sat beside the pump).
/// After it: 224, 344 and 424 (the task pins the pump where it is built). Heap is apart:
/// about 6 KiB per idle TLS connection with buffers and rustls state (heaptrack), 3.7 KiB once
/// rustls' connection gave way to `tls_stream::lean::Records` (issue 18). The
/// rebalance's client list (issue 16) adds 8 bytes to `Established` (the guard's slot; 232)
/// and an entry in its backend's list (the client id) to the heap.
#[test]
#[cfg(target_pointer_width = "64")]
fn idle_connection_state_stays_small() {
    let established = std::mem::size_of::<Established>();
    let pump = size_of_return(Established::run);
    let task = task_size(setup);
    assert!(
        established <= 240,
        "Established is {established} bytes (budget 240)"
    );
    assert!(
        pump <= 368,
        "the pump's future is {pump} bytes (budget 368)"
    );
    assert!(
        task <= 448,
        "a connection's task future is {task} bytes (budget 448)"
    );
}
