//! One module per job type: payload, handler, tests. Registering a new job is one line in
//! [`registry`].

mod noop;
mod test_job;

pub use noop::Noop;
pub use test_job::TestJob;

use crate::queue::registry::Registry;

/// Every job type this binary runs.
pub fn registry() -> Registry {
    Registry::new().add::<Noop>().add::<TestJob>()
}
