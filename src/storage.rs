//! Object storage behind one interface: a local folder by default, or the S3 protocol
//! (AWS S3, MinIO), chosen by `[storage]`. Reads are streams, writes of files are multipart,
//! so no object is ever held whole in memory.

use std::{path::Path, sync::Arc};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use object_store::{
    ObjectStore, ObjectStoreExt, PutPayload, aws::AmazonS3Builder, buffered::BufWriter,
    local::LocalFileSystem, path::Path as ObjectPath,
};
use secrecy::ExposeSecret;
use tokio::io::AsyncWriteExt;

use crate::config::{StorageBackend, StorageSettings};

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// No object under this key.
    #[error("no file at `{0}` in object storage")]
    NotFound(String),
    /// A key that is not a valid object path (`..`, empty segments).
    #[error("invalid object key `{key}`: {message}")]
    BadKey {
        /// The key.
        key: String,
        /// Why.
        message: String,
    },
    /// Misconfiguration.
    #[error("storage configuration: {0}")]
    Config(String),
    /// Anything else from the store (network, permissions): worth a retry.
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
    /// Local I/O while copying a file in.
    #[error("reading local file: {0}")]
    Io(#[from] std::io::Error),
}

/// A handle on the configured object store. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    label: String,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

/// A stream of an object's bytes, with its size.
pub struct ObjectStream {
    /// Size in bytes.
    pub size: u64,
    /// The bytes, in order.
    pub stream: BoxStream<'static, Result<Bytes, StorageError>>,
}

impl Storage {
    /// Builds the store named by the settings. Nothing is contacted yet.
    pub fn from_settings(s: &StorageSettings) -> Result<Self, StorageError> {
        match s.backend {
            StorageBackend::Local => {
                std::fs::create_dir_all(&s.local_root)?;
                // Named absolutely: a relative root depends on the working directory, and a
                // "no such file" must say which folder was looked in.
                let root = std::fs::canonicalize(&s.local_root)?;
                let fs = LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| StorageError::Config(e.to_string()))?;
                Ok(Self {
                    store: Arc::new(fs),
                    label: format!("local:{}", root.display()),
                })
            }
            StorageBackend::S3 => {
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(&s.s3.bucket)
                    .with_region(&s.s3.region)
                    .with_allow_http(s.s3.allow_http);
                if !s.s3.endpoint.is_empty() {
                    b = b.with_endpoint(&s.s3.endpoint);
                }
                if !s.s3.access_key_id.is_empty() {
                    b = b.with_access_key_id(&s.s3.access_key_id);
                }
                if let Some(secret) = &s.s3.secret_access_key {
                    b = b.with_secret_access_key(secret.expose_secret());
                }
                let store = b.build().map_err(|e| StorageError::Config(e.to_string()))?;
                Ok(Self {
                    store: Arc::new(store),
                    label: format!("s3:{}", s.s3.bucket),
                })
            }
        }
    }

    /// `local:/path` or `s3:bucket`, for logs.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn path(key: &str) -> Result<ObjectPath, StorageError> {
        ObjectPath::parse(key).map_err(|e| StorageError::BadKey {
            key: key.to_string(),
            message: e.to_string(),
        })
    }

    fn map_err(key: &str, e: object_store::Error) -> StorageError {
        match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound(key.to_string()),
            other => StorageError::Store(other),
        }
    }

    /// Copies a local file in, streaming (multipart above the part size). Returns its size.
    pub async fn put_file(&self, key: &str, file: &Path) -> Result<u64, StorageError> {
        let path = Self::path(key)?;
        let mut src = tokio::fs::File::open(file).await?;
        let mut w = BufWriter::new(Arc::clone(&self.store), path);
        let n = tokio::io::copy(&mut src, &mut w).await?;
        w.shutdown().await?;
        Ok(n)
    }

    /// Stores bytes under a key (atomically: readers see the old object or the new one).
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let path = Self::path(key)?;
        self.store
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map_err(|e| Self::map_err(key, e))?;
        Ok(())
    }

    /// The object's size, or `NotFound`.
    pub async fn size(&self, key: &str) -> Result<u64, StorageError> {
        let path = Self::path(key)?;
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(|e| Self::map_err(key, e))?;
        Ok(meta.size)
    }

    async fn fetch(&self, key: &str) -> Result<object_store::GetResult, StorageError> {
        let path = Self::path(key)?;
        self.store
            .get(&path)
            .await
            .map_err(|e| Self::map_err(key, e))
    }

    /// Streams an object.
    pub async fn get_stream(&self, key: &str) -> Result<ObjectStream, StorageError> {
        let res = self.fetch(key).await?;
        let size = res.meta.size;
        let k = key.to_string();
        let stream = res
            .into_stream()
            .map_err(move |e| Self::map_err(&k, e))
            .boxed();
        Ok(ObjectStream { size, stream })
    }

    /// A whole (small) object, such as a staged chunk.
    pub async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError> {
        let res = self.fetch(key).await?;
        res.bytes().await.map_err(|e| Self::map_err(key, e))
    }

    /// Deletes one object; one already gone is no error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = Self::path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every object under a prefix; returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        let path = Self::path(prefix)?;
        let keys: Vec<ObjectPath> = self
            .store
            .list(Some(&path))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        let n = keys.len() as u64;
        for k in keys {
            match self.store.delete(&k).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }

    /// Keys under a prefix (tests and ops).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let path = Self::path(prefix)?;
        let keys: Vec<String> = self
            .store
            .list(Some(&path))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await?;
        Ok(keys)
    }
}
