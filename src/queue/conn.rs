//! One Redis connection type for a standalone server and for a Redis Cluster.
//!
//! - Standalone (`redis.cluster = false`): a `ConnectionManager` (multiplexed, reconnects).
//! - Cluster (`redis.cluster = true`, `redis.url` a comma-separated list of seed nodes): redis-rs's
//!   async cluster connection, which follows MOVED/ASK and topology changes. Every key of a
//!   namespace carries the namespace as a hash tag (`{finworker}:q:…`), so all of them live in
//!   one slot: the Lua scripts, which touch several keys at once, run unchanged on the node
//!   that owns it. Each script is invoked with one key of the namespace so the client routes it
//!   there.

use std::time::Duration;

use redis::{
    Client, Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr},
};
use secrecy::ExposeSecret;

use crate::config::RedisSettings;

/// A connection to a standalone Redis or a Redis Cluster. Cheap to clone (both multiplex).
#[derive(Clone)]
pub enum RedisConn {
    /// One server.
    Single(ConnectionManager),
    /// A cluster.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConn::Single",
            Self::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The key prefix actually used: in a cluster the namespace must be one hash tag, so it is
/// wrapped in braces unless it already holds a tag.
pub fn effective_prefix(settings: &RedisSettings) -> String {
    let p = &settings.prefix;
    if settings.cluster && !(p.contains('{') && p.contains('}')) {
        format!("{{{p}}}")
    } else {
        p.clone()
    }
}

/// Connects (waits up to `connection_timeout`).
pub async fn connect(settings: &RedisSettings) -> redis::RedisResult<RedisConn> {
    if settings.cluster {
        let nodes: Vec<&str> = settings
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let mut b = ClusterClient::builder(nodes)
            .connection_timeout(settings.connection_timeout)
            .response_timeout(settings.response_timeout);
        if let Some(pw) = &settings.password {
            b = b.password(pw.expose_secret());
        }
        let conn = b.build()?.get_async_connection().await?;
        return Ok(RedisConn::Cluster(conn));
    }
    let mut info = redis::IntoConnectionInfo::into_connection_info(settings.url.as_str())?;
    if let Some(pw) = &settings.password {
        let redis = info
            .redis_settings()
            .clone()
            .set_password(pw.expose_secret());
        info = info.set_redis_settings(redis);
    }
    let client = Client::open(info)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(settings.response_timeout))
        .set_connection_timeout(Some(settings.connection_timeout))
        // Reconnect quickly after an outage; the worker loops back off on their own.
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    Ok(RedisConn::Single(
        ConnectionManager::new_with_config(client, config).await?,
    ))
}

impl RedisConn {
    /// Runs a keyless command (SCAN) where `key` lives: on a standalone server, there; in a
    /// cluster, on the primary that owns `key`'s slot (the server computes it).
    pub async fn query_at<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Self::Single(c) => cmd.query_async(c).await,
            Self::Cluster(c) => {
                let slot: u16 = redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(key)
                    .query_async(c)
                    .await?;
                let v = c
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                            slot,
                            SlotAddr::Master,
                        ))),
                    )
                    .await?;
                Ok(redis::from_redis_value(v)?)
            }
        }
    }
}
