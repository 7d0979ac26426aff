//! The test servers start, survive a crash with their data, and clean up.

use std::time::Duration;

use tally_testkit::{NatsCluster, NatsServer, TestDb};

async fn stream_with_one_message(js: &async_nats::jetstream::Context) -> anyhow::Result<()> {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "T".into(),
        subjects: vec!["t.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    js.publish("t.a", "hello".into()).await?.await?;
    Ok(())
}

#[tokio::test]
async fn nats_server_keeps_acknowledged_data_across_kill_and_restart() -> anyhow::Result<()> {
    let mut server = NatsServer::start().await?;
    assert!(server.url().ends_with(&server.port().to_string()));
    let dir = server.dir().to_path_buf();
    {
        let client = async_nats::connect(server.url()).await?;
        let js = async_nats::jetstream::new(client);
        stream_with_one_message(&js).await?;
    }

    server.kill().await?;
    assert!(!server.is_running());
    assert!(async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_millis(500))
        .connect(server.url())
        .await
        .is_err());

    server.restart().await?;
    assert!(server.is_running());
    let client = async_nats::connect(server.url()).await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("T").await?;
    assert_eq!(stream.info().await?.state.messages, 1);

    drop(server);
    assert!(!dir.exists(), "the temp dir is removed on drop");
    Ok(())
}

#[tokio::test]
async fn two_servers_run_side_by_side() -> anyhow::Result<()> {
    let a = NatsServer::start().await?;
    let b = NatsServer::start().await?;
    assert_ne!(a.port(), b.port());
    Ok(())
}

#[tokio::test]
async fn cluster_replicates_a_stream_three_times() -> anyhow::Result<()> {
    let mut cluster = NatsCluster::start(3).await?;
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    let client = async_nats::connect(urls.as_slice()).await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "R".into(),
            subjects: vec!["r.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await?;
    js.publish("r.a", "x".into()).await?.await?;
    let info = stream.info().await?;
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(info.state.messages, 1);
    // One node down: the other two still form a quorum.
    cluster.node(2).kill().await?;
    let client = async_nats::connect(cluster.node(0).url()).await?;
    let js = async_nats::jetstream::new(client);
    let mut acked = false;
    for _ in 0..50 {
        if let Ok(ack) = js.publish("r.b", "y".into()).await {
            if ack.await.is_ok() {
                acked = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(acked, "a 2-of-3 quorum accepts writes");
    Ok(())
}

#[tokio::test]
async fn test_db_is_fresh_and_dropped_afterwards() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let name = db.name().to_string();
    assert!(name.starts_with("tally_test_"));
    assert!(db.url().ends_with(&name));
    let pool = db.pool();
    sqlx::query("CREATE TABLE t (x int)").execute(&pool).await?;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM t")
        .fetch_one(&pool)
        .await?;
    assert_eq!(n, 0);
    drop(db);

    let admin_url = std::env::var(tally_testkit::TEST_DATABASE_URL_ENV)
        .unwrap_or_else(|_| tally_testkit::DEFAULT_TEST_DATABASE_URL.to_string());
    let admin = sqlx::PgPool::connect(&admin_url).await?;
    let (exists,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&admin)
            .await?;
    assert!(!exists, "the database is dropped with its TestDb");
    Ok(())
}
