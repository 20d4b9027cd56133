//! A database per test, cloned from a migrated template over a direct admin connection and
//! dropped (WITH (FORCE)) when the test ends. Leftovers older than an hour are swept.

use std::hash::{Hash, Hasher};

use sqlx::{Connection, Executor, PgConnection};

pub const PASSWORD: &str = "finworker";
pub const DIRECT: &str = "postgres://finworker@127.0.0.1:5432";
pub const POOLED: &str = "postgres://finworker@127.0.0.1:6432";

async fn admin() -> PgConnection {
    finworker::db::connect_direct(&format!("{DIRECT}/finworker"), Some(PASSWORD))
        .await
        .expect("connect to postgres as finworker (run scripts/setup.sh)")
}

/// Drops a database a test made by other means (the demo's own). An autovacuum worker in it
/// (a superuser's process FORCE may not end) is waited out a few times; a leftover is swept
/// by a later run (the name starts with fw_t_<unix seconds>).
pub async fn drop_database(name: &str) {
    let mut conn = admin().await;
    for _ in 0..10 {
        if conn
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn template_name() -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        f.file_name().hash(&mut h);
        std::fs::read(&f).unwrap().hash(&mut h);
    }
    format!("fw_tpl_{:016x}", h.finish())
}

/// A fresh, migrated database.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let mut conn = admin().await;
        let tpl = template_name();
        // One process builds the template; the others wait on the advisory lock.
        conn.execute("SELECT pg_advisory_lock(727274)")
            .await
            .unwrap();
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(&tpl)
                .fetch_optional(&mut conn)
                .await
                .unwrap();
        if exists.is_none() {
            let building = format!("{tpl}_building");
            conn.execute(format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)").as_str())
                .await
                .unwrap();
            conn.execute(format!("CREATE DATABASE {building}").as_str())
                .await
                .unwrap();
            let settings = finworker::config::DatabaseSettings {
                url: format!("{POOLED}/{building}"),
                direct_url: format!("{DIRECT}/{building}"),
                password: None,
                max_connections: 1,
                acquire_timeout: std::time::Duration::from_secs(5),
            };
            finworker::db::migrate(&settings, Some(PASSWORD))
                .await
                .unwrap();
            conn.execute(format!("ALTER DATABASE {building} RENAME TO {tpl}").as_str())
                .await
                .unwrap();
        }
        Self::sweep(&mut conn).await;
        let name = format!(
            "fw_t_{}_{}",
            chrono::Utc::now().timestamp(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        conn.execute(format!("CREATE DATABASE {name} TEMPLATE {tpl}").as_str())
            .await
            .unwrap();
        conn.execute("SELECT pg_advisory_unlock(727274)")
            .await
            .unwrap();
        conn.close().await.unwrap();
        Self { name }
    }

    /// An empty database with no migration applied, for tests of the migrations themselves.
    pub async fn create_unmigrated() -> Self {
        let mut conn = admin().await;
        Self::sweep(&mut conn).await;
        let name = format!(
            "fw_t_{}_{}",
            chrono::Utc::now().timestamp(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        conn.close().await.unwrap();
        Self { name }
    }

    async fn sweep(conn: &mut PgConnection) {
        let names: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'fw\\_t\\_%'")
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        let cutoff = chrono::Utc::now().timestamp() - 3600;
        for n in names {
            let ts: i64 = n
                .split('_')
                .nth(2)
                .and_then(|t| t.parse().ok())
                .unwrap_or(i64::MAX);
            if ts < cutoff {
                let _ = conn
                    .execute(format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)").as_str())
                    .await;
            }
        }
    }

    pub fn pooled_url(&self) -> String {
        format!("{POOLED}/{}", self.name)
    }

    pub fn direct_url(&self) -> String {
        format!("{DIRECT}/{}", self.name)
    }

    /// A direct connection to this database, for assertions.
    pub async fn connect(&self) -> PgConnection {
        finworker::db::connect_direct(&self.direct_url(), Some(PASSWORD))
            .await
            .unwrap()
    }
}

impl TestDb {
    /// This test's local object-storage folder (removed with the database).
    pub fn storage_root(&self) -> std::path::PathBuf {
        std::env::temp_dir()
            .join("finworker-test-storage")
            .join(&self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.storage_root());
        let name = self.name.clone();
        // Drop runs outside any async context we can await in: use a small runtime.
        super::block_on_own_thread(move || async move {
            let mut conn = admin().await;
            let _ = conn
                .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await;
        });
    }
}
