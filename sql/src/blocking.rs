//! Blocking work (fsync, SQLite, hashing) called from async code: run where
//! it does not stall the runtime's workers.

/// Runs `work` so it does not block an async worker: on a multi-threaded
/// runtime the worker hands its other tasks to the rest first
/// (`block_in_place`); elsewhere (tests, a current-thread runtime) it just
/// runs.
pub fn off_worker<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}
