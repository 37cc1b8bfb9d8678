//! A private tokio runtime behind blocking calls, for the parts of the log that speak to the
//! network from synchronous code (the S3 driver, the HTTP tile source): usable from any thread,
//! also from inside another runtime (where blocking directly panics), and dropped anywhere.

use std::future::Future;
use std::io;

/// A multi-threaded runtime that blocking callers run futures on.
pub(crate) struct BlockingRuntime(Option<tokio::runtime::Runtime>);

impl BlockingRuntime {
    /// A runtime of `workers` threads named `name`.
    pub(crate) fn new(name: &str, workers: usize) -> io::Result<BlockingRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(BlockingRuntime(Some(rt)))
    }

    fn rt(&self) -> io::Result<&tokio::runtime::Runtime> {
        self.0
            .as_ref()
            .ok_or_else(|| io::Error::other("the runtime was shut down"))
    }

    /// Its handle (to spawn tasks, or to block on from another thread).
    pub(crate) fn handle(&self) -> io::Result<tokio::runtime::Handle> {
        Ok(self.rt()?.handle().clone())
    }

    /// Runs `fut` to completion; from inside another runtime, on a scoped thread.
    pub(crate) fn block_on<F>(&self, fut: F) -> io::Result<F::Output>
    where
        F: Future + Send,
        F::Output: Send,
    {
        let rt = self.rt()?;
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| rt.block_on(fut))
                    .join()
                    .map_err(|_| io::Error::other("a blocking network call panicked"))
            })
        } else {
            Ok(rt.block_on(fut))
        }
    }
}

impl Drop for BlockingRuntime {
    fn drop(&mut self) {
        // Allowed anywhere, even inside another runtime (dropping a runtime is not).
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
