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
