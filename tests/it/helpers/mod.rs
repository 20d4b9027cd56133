pub mod app;
pub mod chaos;
pub mod db;
pub mod process;

pub use app::{spawn_api_only, spawn_app, spawn_app_with};

use std::time::{Duration, Instant};

/// Runs async clean-up from `Drop` (which cannot await): on a thread of its own with a
/// small runtime, waiting for it to finish.
pub fn block_on_own_thread<F>(make: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(make());
    })
    .join();
}

/// Polls `f` until it returns `Some`, or panics after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
