//! Builds the application once (context, listener) and runs its parts until shutdown.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{ConfigError, Settings},
    context::AppContext,
    db::Db,
    http, jobs,
    metrics::Metrics,
    queue::{engine::Engine, registry::Registry, runtime},
};

/// Which parts of the daemon run.
#[derive(Debug, Clone)]
pub struct Roles {
    /// Job workers.
    pub workers: bool,
    /// HTTP receiver.
    pub http: bool,
    /// Only these queues (all when empty).
    pub queues: Vec<String>,
}

impl Default for Roles {
    fn default() -> Self {
        Self {
            workers: true,
            http: true,
            queues: Vec::new(),
        }
    }
}

/// A built application, ready to run.
pub struct App {
    /// Shared context.
    pub ctx: AppContext,
    listener: Option<TcpListener>,
    roles: Roles,
}

/// Checks configuration against the job registry (names a bad key).
pub fn check_against_registry(settings: &Settings, registry: &Registry) -> Result<(), ConfigError> {
    for name in settings.queues.keys() {
        if registry.get(name).is_none() {
            return Err(ConfigError::Invalid {
                key: format!("queues.{name}"),
                message: format!(
                    "no job type `{name}` (known: {})",
                    registry.names().join(", ")
                ),
            });
        }
    }
    for (i, c) in settings.cron.iter().enumerate() {
        let Some(entry) = registry.get(&c.job_type) else {
            return Err(ConfigError::Invalid {
                key: format!("cron[{i}].job_type"),
                message: format!("no job type `{}`", c.job_type),
            });
        };
        if let Err(e) = entry.validate(c.payload.to_string().as_bytes()) {
            return Err(ConfigError::Invalid {
                key: format!("cron[{i}].payload"),
                message: format!("at `{}`: {}", e.field, e.message),
            });
        }
    }
    Ok(())
}

/// Builds the shared context: connects to Redis, prepares the (lazy) Postgres pool.
pub async fn build_context(settings: Settings) -> anyhow::Result<AppContext> {
    let registry = jobs::registry();
    check_against_registry(&settings, &registry)?;
    let db = Db::connect_lazy(&settings.database, settings.database_password())?;
    let queue = Engine::connect(&settings.redis)
        .await
        .with_context(|| format!("connecting to redis at {}", settings.redis.url))?;
    let storage = crate::storage::Storage::from_settings(&settings.storage)
        .context("opening object storage")?;
    let metrics = Arc::new(Metrics::new());
    let vop = crate::vop::Verifier::from_settings(&settings.vop, &queue, metrics.clone())
        .context("building the VOP provider client")?;
    let accounts = crate::billing::accounts::Accounts::from_settings(
        &settings.gateway,
        &queue,
        metrics.clone(),
    )
    .context("building the gateway account clients")?;
    metrics.init_series(registry.names(), accounts.names(), vop.provider_name());
    Ok(AppContext {
        accounts,
        db,
        queue,
        metrics,
        registry: Arc::new(registry),
        iban: settings
            .privacy
            .iban_key
            .as_ref()
            .map(crate::iban::IbanHasher::new),
        settings: Arc::new(settings),
        storage,
        vop,
        key_filter: Default::default(),
    })
}

impl App {
    /// Builds everything that can fail at start: configuration checks, connections, the
    /// listening socket.
    pub async fn build(settings: Settings, roles: Roles) -> anyhow::Result<Self> {
        if roles.http && settings.http.api_token.is_none() {
            return Err(ConfigError::Invalid {
                key: "http.api_token".into(),
                message: format!(
                    "required to serve the enqueue API; set {}",
                    crate::config::env_var_name("http.api_token")
                ),
            }
            .into());
        }
        let imports = roles.workers
            && (roles.queues.is_empty() || roles.queues.iter().any(|q| q == "upload_chunk"));
        if imports && settings.privacy.iban_key.is_none() {
            return Err(ConfigError::Invalid {
                key: "privacy.iban_key".into(),
                message: format!(
                    "required by workers that import debtors (the upload_chunk queue); set {} to 32+ random bytes",
                    crate::config::env_var_name("privacy.iban_key")
                ),
            }
            .into());
        }
        crate::faults::arm(settings.worker.allow_test_jobs);
        for w in settings.warnings() {
            warn!("configuration: {w}");
        }
        let ctx = build_context(settings).await?;
        if imports && let Some(h) = ctx.iban.as_ref() {
            // Debtors stored before keyed IBAN hashing (see migrations/20261201000001).
            match crate::uploads::backfill_iban_keys(&ctx.db, h).await {
                Ok(0) => {}
                Ok(n) => info!(debtors = n, "gave stored debtors their IBAN lookup key"),
                Err(e) => warn!(error = %e, "could not fill stored debtors' IBAN lookup keys"),
            }
        }
        if !ctx.settings.gateway.accounts.is_empty() {
            match crate::billing::accounts::sync(&ctx.db, &ctx.settings.gateway).await {
                Ok(n) => info!(accounts = n, "gateway accounts synced"),
                Err(e) => {
                    warn!(error = %e, "could not sync gateway accounts (each run syncs them again)")
                }
            }
        }
        match ctx.queue.durability_warnings().await {
            Ok(ws) => {
                for w in ws {
                    warn!("REDIS IS NOT SAFE FOR MONEY JOBS: {w}");
                }
            }
            Err(e) => warn!(error = %e, "could not read redis persistence settings"),
        }
        for q in &roles.queues {
            if ctx.registry.get(q).is_none() {
                anyhow::bail!(
                    "--queues: no job type `{q}` (known: {})",
                    ctx.registry.names().join(", ")
                );
            }
        }
        let listener = if roles.http {
            let bind = &ctx.settings.http.bind;
            Some(
                TcpListener::bind(bind)
                    .await
                    .with_context(|| format!("binding http.bind = {bind}"))?,
            )
        } else {
            None
        };
        Ok(Self {
            ctx,
            listener,
            roles,
        })
    }

    /// The HTTP address actually bound (port 0 resolved).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Runs until `shutdown` is cancelled and every part has stopped.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            ctx,
            listener,
            roles,
        } = self;
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(listener) = listener {
            info!(addr = ?listener.local_addr().ok(), "http listening");
            let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
            tasks.spawn(async move {
                http::serve(listener, ctx, shutdown)
                    .await
                    .context("http server")
            });
        }
        if roles.workers {
            let queues = if roles.queues.is_empty() {
                ctx.registry
                    .entries()
                    .filter(|e| !e.test_only || ctx.settings.worker.allow_test_jobs)
                    .map(|e| e.name.to_string())
                    .collect()
            } else {
                roles.queues.clone()
            };
            let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
            tasks.spawn(async move { runtime::run(ctx, queues, shutdown).await });
        }
        let mut first_error = None;
        while let Some(res) = tasks.join_next().await {
            let res = res.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = res {
                // One part failing stops the others: a half-running daemon hides problems.
                shutdown.cancel();
                first_error.get_or_insert(e);
            }
        }
        ctx.db.close().await;
        first_error.map_or(Ok(()), Err)
    }
}
