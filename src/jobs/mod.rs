//! One module per job type: payload, handler, tests. Registering a new job is one line in
//! [`registry`].

mod noop;
mod test_job;
pub mod upload;
pub mod upload_chunk;

pub use noop::Noop;
pub use test_job::TestJob;
pub use upload::Upload;
pub use upload_chunk::UploadChunk;

use crate::queue::registry::Registry;

/// Every job type this binary runs.
pub fn registry() -> Registry {
    Registry::new()
        .add::<Noop>()
        .add::<TestJob>()
        .add::<Upload>()
        .add::<UploadChunk>()
}
