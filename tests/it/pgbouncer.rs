//! The database layer through the real PgBouncer in transaction mode: concurrent mixed
//! parameterised statements, including same-shape pairs (the case that silently returns
//! another client's rows when statements escape a transaction), all checked.

use finworker::db::Db;

use crate::helpers::{app::test_settings, db::TestDb};

#[tokio::test]
async fn concurrent_mixed_queries_through_pgbouncer_return_the_right_rows_every_time() {
    let tdb = TestDb::create().await;
    let mut settings = test_settings(&tdb, "unused");
    settings.database.max_connections = 16;
    let db = Db::connect_lazy(&settings.database, settings.database_password()).unwrap();
    {
        let mut tx = db.begin().await.unwrap();
        tx.execute(sqlx::query(
            "CREATE TABLE items (task int NOT NULL, i int NOT NULL, label text NOT NULL)",
        ))
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    let tasks: Vec<_> = (0..16)
        .map(|task: i32| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut wrong = 0;
                for i in 0..250i32 {
                    let mut tx = db.begin().await.unwrap();
                    // Two statements of the same shape (one int8 parameter) with different SQL.
                    let a: i64 = tx
                        .scalar(sqlx::query_scalar("SELECT $1::int8 + 1").bind(i as i64))
                        .await
                        .unwrap();
                    let b: i64 = tx
                        .scalar(sqlx::query_scalar("SELECT $1::int8 * 2").bind(i as i64))
                        .await
                        .unwrap();
                    tx.execute(
                        sqlx::query("INSERT INTO items (task, i, label) VALUES ($1, $2, $3)")
                            .bind(task)
                            .bind(i)
                            .bind(format!("t{task}-{i}")),
                    )
                    .await
                    .unwrap();
                    let row: Option<(i32, String)> = tx
                        .fetch_optional(
                            sqlx::query_as("SELECT i, label FROM items WHERE task = $1 AND i = $2")
                                .bind(task)
                                .bind(i),
                        )
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                    if a != i as i64 + 1
                        || b != i as i64 * 2
                        || row != Some((i, format!("t{task}-{i}")))
                    {
                        wrong += 1;
                    }
                }
                wrong
            })
        })
        .collect();
    let mut wrong = 0;
    for t in tasks {
        wrong += t.await.unwrap();
    }

    assert_eq!(wrong, 0, "results from another statement or client");
    let mut tx = db.begin().await.unwrap();
    let n: i64 = tx
        .scalar(sqlx::query_scalar("SELECT count(*) FROM items"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(n, 16 * 250);
    db.close().await;
}

#[tokio::test]
async fn copy_works_through_pgbouncer() {
    let tdb = TestDb::create().await;
    let settings = test_settings(&tdb, "unused");
    let db = Db::connect_lazy(&settings.database, settings.database_password()).unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.execute(sqlx::query("CREATE TABLE t (a int, b text)"))
        .await
        .unwrap();

    let n = tx
        .copy_in(
            "COPY t (a, b) FROM STDIN WITH (FORMAT csv)",
            b"1,x\n2,\"y,z\"\n",
        )
        .await
        .unwrap();
    let rows: Vec<(i32, String)> = tx
        .fetch_all(sqlx::query_as("SELECT a, b FROM t ORDER BY a"))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(n, 2);
    assert_eq!(rows, [(1, "x".to_string()), (2, "y,z".to_string())]);
    db.close().await;
}

/// Why the daemon logged "there is already a transaction in progress" after a Postgres
/// restart: a `begin()` cancelled (a job timeout, an abort) after its BEGIN was sent but
/// before sqlx counted the transaction left the pooled connection inside a transaction
/// nobody owns; the next `begin()` on it ran inside that one. `Db::begin` now finishes (or
/// rolls back) a BEGIN even when its caller is cancelled: no transaction ever starts earlier
/// than the `begin()` that owns it.
#[tokio::test]
async fn a_cancelled_begin_never_leaves_a_transaction_for_the_next_caller() {
    let tdb = TestDb::create().await;
    let mut settings = test_settings(&tdb, "unused");
    settings.database.max_connections = 4;
    let db = Db::connect_lazy(&settings.database, settings.database_password()).unwrap();
    db.ping().await.unwrap();

    // A storm of begin() calls cut at every point of their round trip.
    for i in 0..3000u64 {
        let cut = std::time::Duration::from_micros(i % 400);
        let _ = tokio::time::timeout(cut, db.begin()).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // Every later transaction starts when its own begin() does.
    let mut inherited = 0;
    for _ in 0..200 {
        let mut tx = db.begin().await.unwrap();
        let old: bool = tx
            .scalar(sqlx::query_scalar(
                "SELECT statement_timestamp() - now() > interval '100 milliseconds'",
            ))
            .await
            .unwrap();
        inherited += i32::from(old);
        tx.commit().await.unwrap();
    }
    assert_eq!(
        inherited, 0,
        "transactions ran inside a BEGIN left by a cancelled caller"
    );
}

/// A statement future dropped half-way (a job cut by its timeout, or aborted when its worker
/// lost its lease) must not hand the next caller a connection still owed the dropped
/// statement's answers ("expected ParseComplete, got CommandComplete", or worse, its rows).
#[tokio::test]
async fn statements_cut_at_any_point_leave_no_connection_out_of_step() {
    let tdb = TestDb::create().await;
    let mut settings = test_settings(&tdb, "unused");
    settings.database.max_connections = 4;
    let db = Db::connect_lazy(&settings.database, settings.database_password()).unwrap();
    // Big binds (written to the socket in several pieces) and many-row answers, cut
    // anywhere: before, during and after the write, while the rows arrive.
    let big: Vec<i32> = (0..200_000).collect();
    {
        let mut tx = db.begin().await.unwrap();
        tx.execute_raw("CREATE TABLE sink (a int, b text)")
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let rows: Vec<u8> = (0..50_000)
        .flat_map(|i| format!("{i}\tsome text for row {i}\n").into_bytes())
        .collect();
    for i in 0..600u64 {
        let cut = std::time::Duration::from_micros((i * 37) % 6000);
        let big = big.clone();
        let _ = tokio::time::timeout(cut, async {
            let mut tx = db.begin().await?;
            let _: i64 = tx
                .scalar(sqlx::query_scalar("SELECT count(*) FROM unnest($1::int4[])").bind(big))
                .await?;
            let _: Vec<(i32,)> = tx
                .fetch_all(sqlx::query_as("SELECT g FROM generate_series(1, $1) g").bind(5000))
                .await?;
            tx.copy_in("COPY sink (a, b) FROM STDIN", &rows).await?;
            tx.commit().await
        })
        .await;
    }
    for want in 0..300i32 {
        let mut tx = db.begin().await.unwrap();
        let got: i32 = tx
            .scalar(sqlx::query_scalar("SELECT $1::int4").bind(want))
            .await
            .unwrap();
        assert_eq!(got, want);
        tx.commit().await.unwrap();
    }
}
