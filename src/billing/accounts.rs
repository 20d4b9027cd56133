//! Gateway accounts: the configured merchant accounts, each with its API client, its rate
//! limit (shared by every process through Redis) and its circuit breaker; synced to the
//! `gateway_accounts` table so runs, attempts and operators can refer to them.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde::Serialize;

use crate::{
    config::{GatewayAccountSettings, GatewaySettings, env_var_name},
    db::{Db, DbError},
    gateway::{self, Gateway},
    guard::{BreakerPolicy, GuardKey, breaker::Breaker, limiter::SharedLimiter},
    metrics::Metrics,
    queue::engine::Engine,
};

/// One account, ready to call.
#[derive(Debug)]
pub struct Account {
    /// Its name.
    pub name: String,
    /// Its configuration.
    pub settings: GatewayAccountSettings,
    /// The API client.
    pub gateway: Arc<dyn Gateway>,
    /// Requests per second, all processes together.
    pub limiter: SharedLimiter,
    /// Gateway errors and timeouts open it; declines do not.
    pub breaker: Breaker,
}

/// Why a guarded gateway call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum Guarded {
    /// The account's breaker is open: no call was made.
    #[error("the gateway account's circuit breaker is open")]
    BreakerOpen,
    /// The shared rate limit could not be asked (Redis): no call was made.
    #[error("rate limiter unreachable: {0}")]
    Limiter(redis::RedisError),
    /// The call failed.
    #[error(transparent)]
    Call(gateway::CallError),
}

impl Account {
    /// Looks a transaction up under the account's breaker and shared rate limit.
    pub async fn reconcile(&self, key: gateway::TxKey<'_>) -> Result<gateway::Lookup, Guarded> {
        self.guarded(|g| g.reconcile(key)).await
    }

    /// One gateway call (not a debit) under the account's breaker and shared rate limit.
    pub async fn guarded<'a, T>(
        &'a self,
        call: impl FnOnce(
            &'a dyn Gateway,
        ) -> futures::future::BoxFuture<'a, Result<T, gateway::CallError>>,
    ) -> Result<T, Guarded> {
        let Some(permit) = self.breaker.permit_shared().await else {
            return Err(Guarded::BreakerOpen);
        };
        if let Err(e) = self.limiter.acquire().await {
            permit.abandon();
            return Err(Guarded::Limiter(e));
        }
        let r = call(self.gateway.as_ref()).await;
        match &r {
            Ok(_) => permit.success(),
            Err(_) => permit.failure(),
        }
        r.map_err(Guarded::Call)
    }
}

/// The configured accounts by name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Accounts(Arc<BTreeMap<String, Arc<Account>>>);

impl Accounts {
    /// Clients, limiters and breakers of every configured account.
    pub fn from_settings(
        s: &GatewaySettings,
        queue: &Engine,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut m = BTreeMap::new();
        for (name, a) in &s.accounts {
            let gw = gateway::connect(name, a, s)?;
            let key = GuardKey {
                provider: gw.name(),
                account: name.clone(),
            };
            let limiter =
                SharedLimiter::new(queue, &key, a.rate_limit).with_metrics(metrics.clone());
            let breaker = Breaker::shared(key, &breaker_policy(a), metrics.clone(), queue);
            m.insert(
                name.clone(),
                Arc::new(Account {
                    name: name.clone(),
                    settings: a.clone(),
                    gateway: gw,
                    limiter,
                    breaker,
                }),
            );
        }
        Ok(Self(Arc::new(m)))
    }

    /// An account by name.
    pub fn get(&self, name: &str) -> Option<Arc<Account>> {
        self.0.get(name).cloned()
    }

    /// Names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

/// The breaker policy of an account.
pub fn breaker_policy(a: &GatewayAccountSettings) -> BreakerPolicy {
    BreakerPolicy {
        min_success_rate: a.breaker_min_success_rate,
        min_requests: a.breaker_min_requests,
        window: a.breaker_window,
        open_for: a.breaker_open_for,
        open_max: a.breaker_open_max,
    }
}

/// Writes the configured accounts into `gateway_accounts` (the password only as the name of
/// its environment variable). Accounts no longer configured stay, disabled: attempts refer
/// to them. Returns how many are configured.
pub async fn sync(db: &Db, s: &GatewaySettings) -> Result<usize, DbError> {
    let mut tx = db.begin().await?;
    for (name, a) in &s.accounts {
        let breaker = serde_json::json!({
            "min_success_rate": a.breaker_min_success_rate,
            "min_requests": a.breaker_min_requests,
            "window": humantime::format_duration(a.breaker_window).to_string(),
            "open_for": humantime::format_duration(a.breaker_open_for).to_string(),
            "open_max": humantime::format_duration(a.breaker_open_max).to_string(),
        });
        tx.execute(
            sqlx::query(
                "INSERT INTO gateway_accounts (name, gateway, endpoint, terminal_token, username, password_env, \
                 currency, rate_limit, breaker, monthly_cap_minor, enabled, synced_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now()) \
                 ON CONFLICT (name) DO UPDATE SET gateway = EXCLUDED.gateway, endpoint = EXCLUDED.endpoint, \
                 terminal_token = EXCLUDED.terminal_token, username = EXCLUDED.username, \
                 password_env = EXCLUDED.password_env, currency = EXCLUDED.currency, \
                 rate_limit = EXCLUDED.rate_limit, breaker = EXCLUDED.breaker, \
                 monthly_cap_minor = EXCLUDED.monthly_cap_minor, enabled = EXCLUDED.enabled, synced_at = now()",
            )
            .bind(name)
            .bind(&a.gateway)
            .bind(&a.endpoint)
            .bind(&a.terminal_token)
            .bind(&a.username)
            .bind(env_var_name(&format!("gateway.accounts.{name}.password")))
            .bind(&a.currency)
            .bind(i32::try_from(a.rate_limit).unwrap_or(i32::MAX))
            .bind(breaker)
            .bind(a.monthly_cap_minor)
            .bind(a.enabled),
        )
        .await?;
    }
    let names: Vec<&String> = s.accounts.keys().collect();
    tx.execute(
        sqlx::query("UPDATE gateway_accounts SET enabled = false, synced_at = now() WHERE enabled AND NOT (name = ANY($1))")
            .bind(names),
    )
    .await?;
    tx.commit().await?;
    Ok(s.accounts.len())
}

/// A row of `finworker accounts list`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AccountRow {
    /// Name.
    pub name: String,
    /// Gateway module.
    pub gateway: String,
    /// Base URL.
    pub endpoint: String,
    /// API username.
    pub username: String,
    /// Where the password comes from (an environment variable's name).
    pub password_env: String,
    /// Currency.
    pub currency: String,
    /// Requests per second.
    pub rate_limit: i32,
    /// Monthly cap, minor units.
    pub monthly_cap_minor: Option<i64>,
    /// Committed this month, minor units.
    pub month_committed_minor: i64,
    /// Enabled.
    pub enabled: bool,
    /// Why the chargeback-rate guard holds it (no billing run debits through it), if it does.
    pub hold_reason: Option<String>,
}

/// Every account in the table.
pub async fn list(db: &Db) -> Result<Vec<AccountRow>, DbError> {
    let mut tx = db.begin().await?;
    let rows = tx
        .fetch_all(sqlx::query_as::<_, AccountRow>(
            "SELECT a.name, a.gateway, a.endpoint, a.username, a.password_env, a.currency, a.rate_limit, \
             a.monthly_cap_minor, coalesce((SELECT sum(b.amount_minor) FROM billing_attempts b WHERE b.account = a.name \
               AND b.created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' \
               AND b.status IN ('submitted', 'unknown', 'pending', 'pending_async', 'approved')), 0)::bigint AS month_committed_minor, \
             a.enabled, a.hold_reason FROM gateway_accounts a ORDER BY a.name",
        ))
        .await?;
    tx.commit().await?;
    Ok(rows)
}

/// How long to wait before an account's breaker (any process's) lets a call through again;
/// `None`: calls may go out now.
pub async fn breaker_wait(a: &Account) -> Option<Duration> {
    a.breaker.shared_wait().await
}
