//! The bus against a real nats-server: topology, dedup, fetch/ack,
//! redelivery and dead letters.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tally_bus::{
    Bus, BusConfig, ConsumerName, DeadLetterReason, DeadLetterService, Delivery, StreamKind,
};
use tally_testkit::NatsServer;

async fn bus_on(server: &NatsServer) -> anyhow::Result<Bus> {
    let bus = Bus::connect(&BusConfig::new(server.url())).await?;
    bus.ensure_topology().await?;
    Ok(bus)
}

/// A new server and a bus on it with its topology.
async fn fresh_bus() -> anyhow::Result<(NatsServer, Bus)> {
    let server = NatsServer::start().await?;
    let bus = bus_on(&server).await?;
    Ok((server, bus))
}

/// Publishes `body` on `<prefix>.<tail>` with the message id `id`.
async fn send(bus: &Bus, tail: &str, id: &str, body: impl Into<Bytes>) -> anyhow::Result<()> {
    bus.publish(&bus.subject(tail), id, body.into()).await?;
    Ok(())
}

/// Publishes each `(id, body)` on `<prefix>.<tail>`, in order.
async fn send_all<const N: usize>(
    bus: &Bus,
    tail: &str,
    messages: [(&str, &'static str); N],
) -> anyhow::Result<()> {
    for (id, body) in messages {
        send(bus, tail, id, body).await?;
    }
    Ok(())
}

/// Acknowledges every delivery of `batch`.
async fn ack_all(batch: &[Delivery]) -> anyhow::Result<()> {
    for d in batch {
        d.ack().await?;
    }
    Ok(())
}

/// Waits (at most 5 s) until the consumer's pending count is `expected`:
/// the server updates it a moment after a publish is acknowledged.
async fn assert_pending(bus: &Bus, name: ConsumerName, expected: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pending = bus.pending(name).await?;
        if pending == expected {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("{name}: pending {pending}, expected {expected}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fetches until `n` messages arrived (or 10 s passed).
async fn fetch_n(consumer: &tally_bus::Consumer, n: usize) -> anyhow::Result<Vec<Delivery>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        out.extend(
            consumer
                .fetch(n - out.len(), Duration::from_millis(500))
                .await?,
        );
    }
    Ok(out)
}

#[tokio::test]
async fn topology_is_idempotent() -> anyhow::Result<()> {
    let (_server, bus) = fresh_bus().await?;
    bus.ensure_topology().await?;
    bus.ensure_topology().await?;

    let js = bus.jetstream();
    for kind in StreamKind::ALL {
        let mut stream = js.get_stream(bus.stream_name(kind)).await?;
        let info = stream.info().await?;
        assert_eq!(
            info.config.subjects,
            vec![format!("tally.{}", kind.subject_pattern())]
        );
        assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
        assert_eq!(
            info.config.storage,
            async_nats::jetstream::stream::StorageType::File
        );
        assert_eq!(
            info.config.retention,
            async_nats::jetstream::stream::RetentionPolicy::Limits
        );
    }
    assert_eq!(
        bus.stream_name(StreamKind::Generations),
        "TALLY_GENERATIONS"
    );
    for name in ConsumerName::ALL {
        let stream = js.get_stream(bus.stream_name(name.stream())).await?;
        let info = stream.consumer_info(name.durable()).await?;
        assert_eq!(
            info.config.filter_subject,
            format!("tally.{}", name.filter_pattern())
        );
        assert_eq!(info.config.ack_wait, Duration::from_secs(60));
        assert_eq!(info.config.max_ack_pending, 20_000);
        assert_pending(&bus, name, 0).await?;
    }
    Ok(())
}

#[tokio::test]
async fn custom_prefix_gets_its_own_streams() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let cfg = BusConfig {
        url: server.url(),
        prefix: "acme-test".into(),
        ..BusConfig::default()
    };
    let bus = Bus::connect(&cfg).await?;
    bus.ensure_topology().await?;
    assert_eq!(bus.subject("cost.x"), "acme-test.cost.x");
    assert_eq!(bus.stream_name(StreamKind::Costs), "ACME_TEST_COSTS");
    send(&bus, "cost.reconciled.o1", "c1", "{}").await?;
    assert_eq!(bus.stream_last_sequence(StreamKind::Costs).await?, 1);
    assert_pending(&bus, ConsumerName::ProjectorCosts, 1).await?;

    let bad = BusConfig {
        prefix: "bad prefix".into(),
        ..cfg
    };
    let err = Bus::connect(&bad).await.unwrap_err();
    assert_eq!(err.code(), "bus_config");
    Ok(())
}

#[tokio::test]
async fn same_msg_id_is_stored_once() -> anyhow::Result<()> {
    let (_server, bus) = fresh_bus().await?;
    // The second evt-1 is a duplicate the stream drops.
    let messages = [
        ("evt-1", "{\"a\":1}"),
        ("evt-1", "{\"a\":1}"),
        ("evt-2", "{\"a\":2}"),
    ];
    send_all(&bus, "generation.completed.org1", messages).await?;
    assert_eq!(bus.stream_last_sequence(StreamKind::Generations).await?, 2);
    assert_pending(&bus, ConsumerName::ProjectorCompleted, 2).await?;
    // The requested-only worker sees none of it.
    assert_pending(&bus, ConsumerName::Worker, 0).await?;
    Ok(())
}

#[tokio::test]
async fn publish_without_a_stream_fails_cleanly() -> anyhow::Result<()> {
    let (_server, bus) = fresh_bus().await?;
    let err = bus
        .publish("nowhere.at.all", "x", Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), "bus_publish" | "bus_publish_timeout"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn fetch_returns_batches_and_ack_works() -> anyhow::Result<()> {
    let (_server, bus) = fresh_bus().await?;
    for i in 0..25 {
        let body = format!("{{\"i\":{i}}}");
        send(&bus, "generation.completed.org1", &format!("e{i}"), body).await?;
    }
    let consumer = bus.consumer(ConsumerName::ProjectorCompleted).await?;
    assert_eq!(consumer.name(), "projector-completed");

    let first = consumer.fetch(10, Duration::from_secs(2)).await?;
    assert_eq!(first.len(), 10);
    assert_eq!(first[0].stream_sequence(), 1);
    assert_eq!(first[0].msg_id(), Some("e0"));
    assert_eq!(first[0].delivered(), 1);
    assert_eq!(first[0].subject(), "tally.generation.completed.org1");
    assert_eq!(first[0].stream(), "TALLY_GENERATIONS");
    assert_eq!(first[0].payload(), b"{\"i\":0}");
    ack_all(&first).await?;
    let rest = fetch_n(&consumer, 15).await?;
    assert_eq!(rest.len(), 15);
    ack_all(&rest).await?;
    assert_pending(&bus, ConsumerName::ProjectorCompleted, 0).await?;

    // Nothing left: an empty batch, after about the wait and not much longer.
    let started = Instant::now();
    let none = consumer.fetch(10, Duration::from_millis(300)).await?;
    assert!(none.is_empty());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "waits when empty: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "but not much longer: {took:?}"
    );

    // Fewer messages than asked for: returns them without waiting for more.
    for i in 0..3 {
        send(&bus, "generation.completed.org2", &format!("f{i}"), "{}").await?;
    }
    let started = Instant::now();
    let few = consumer.fetch(100, Duration::from_secs(5)).await?;
    assert_eq!(few.len(), 3);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    ack_all(&few).await?;

    // The reconciler reads the same subjects independently.
    assert_pending(&bus, ConsumerName::Reconciler, 28).await?;
    Ok(())
}

#[tokio::test]
async fn fetch_waits_for_a_message_that_arrives_later() -> anyhow::Result<()> {
    let (_server, bus) = fresh_bus().await?;
    let consumer = bus.consumer(ConsumerName::Worker).await?;
    let publisher = bus.clone();
    let publish = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publisher
            .publish(
                &publisher.subject("generation.requested.org1"),
                "r1",
                Bytes::from_static(b"{}"),
            )
            .await
    });
    let got = fetch_n(&consumer, 1).await?;
    publish.await??;
    assert_eq!(got.len(), 1);
    got[0].ack().await?;
    Ok(())
}

#[tokio::test]
async fn naked_message_is_redelivered() -> anyhow::Result<()> {
    let (_server, bus) = fresh_bus().await?;
    send(&bus, "cost.reconciled.org1", "c1", "{}").await?;
    send(&bus, "cost.reconciled.org1", "c2", "{}").await?;
    let consumer = bus.consumer(ConsumerName::ProjectorCosts).await?;
    let got = fetch_n(&consumer, 2).await?;
    assert_eq!(got.len(), 2);
    // c1: nak, redelivered at once; c2: still being worked on.
    got[0].nak(None).await?;
    got[1].in_progress().await?;
    let again = fetch_n(&consumer, 1).await?;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].msg_id(), Some("c1"));
    assert_eq!(again[0].delivered(), 2);
    again[0].ack().await?;
    got[1].ack().await?;
    assert_pending(&bus, ConsumerName::ProjectorCosts, 0).await?;
    Ok(())
}

#[tokio::test]
async fn unacked_message_is_redelivered_after_the_ack_wait() -> anyhow::Result<()> {
    let (_server, bus) = fresh_bus().await?;
    // Shorten the durable's ack wait (60 s in the topology) for the test.
    let stream = bus
        .jetstream()
        .get_stream(bus.stream_name(StreamKind::Generations))
        .await?;
    let mut config = stream
        .consumer_info(ConsumerName::Worker.durable())
        .await?
        .config;
    config.ack_wait = Duration::from_secs(1);
    bus.jetstream()
        .update_consumer_on_stream(config, bus.stream_name(StreamKind::Generations))
        .await?;

    send(&bus, "generation.requested.org1", "r1", "{}").await?;
    let consumer = bus.consumer(ConsumerName::Worker).await?;
    let first = fetch_n(&consumer, 1).await?;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].delivered(), 1);
    drop(first); // neither acked nor naked: a crashed worker

    let started = Instant::now();
    let again = fetch_n(&consumer, 1).await?;
    assert_eq!(again.len(), 1, "redelivered");
    assert_eq!(again[0].msg_id(), Some("r1"));
    assert_eq!(again[0].delivered(), 2);
    assert!(started.elapsed() >= Duration::from_millis(500));
    again[0].ack().await?;

    // ensure_topology restores the configured ack wait.
    bus.ensure_topology().await?;
    let info = stream.consumer_info(ConsumerName::Worker.durable()).await?;
    assert_eq!(info.config.ack_wait, Duration::from_secs(60));
    Ok(())
}

#[tokio::test]
async fn unacked_message_comes_back_after_a_server_crash() -> anyhow::Result<()> {
    let mut server = NatsServer::start().await?;
    {
        let bus = bus_on(&server).await?;
        send(&bus, "generation.completed.org1", "g1", "{}").await?;
        let consumer = bus.consumer(ConsumerName::ProjectorCompleted).await?;
        let got = fetch_n(&consumer, 1).await?;
        assert_eq!(got.len(), 1);
        // Not acked: crash.
    }
    server.kill().await?;
    server.restart().await?;
    let bus = Bus::connect(&BusConfig::new(server.url())).await?;
    assert_pending(&bus, ConsumerName::ProjectorCompleted, 1).await?;
    Ok(())
}

#[tokio::test]
async fn replay_consumer_reads_from_the_start() -> anyhow::Result<()> {
    let (_server, bus) = fresh_bus().await?;
    for i in 0..3 {
        send(&bus, "generation.completed.org1", &format!("g{i}"), "{}").await?;
    }
    send(&bus, "generation.requested.org1", "r", "{}").await?;
    // The durable consumers already consumed everything.
    let durable = bus.consumer(ConsumerName::ProjectorCompleted).await?;
    for d in fetch_n(&durable, 3).await? {
        d.ack().await?;
    }
    let last = bus.stream_last_sequence(StreamKind::Generations).await?;
    assert_eq!(last, 4);
    let replay = bus
        .replay_consumer(
            StreamKind::Generations,
            &bus.subject("generation.completed.>"),
        )
        .await?;
    let got = fetch_n(&replay, 3).await?;
    let seqs: Vec<u64> = got.iter().map(Delivery::stream_sequence).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    ack_all(&got).await?;
    let all = bus.replay_consumer(StreamKind::Generations, "").await?;
    assert_eq!(fetch_n(&all, 4).await?.len(), 4);
    Ok(())
}

/// The issue's done-criterion: a consumer loop that meets a malformed
/// payload dead-letters it, acks it and keeps going.
#[tokio::test]
async fn poison_message_is_dead_lettered_and_does_not_block() -> anyhow::Result<()> {
    let (_server, bus) = fresh_bus().await?;
    let messages = [
        ("ok-1", "{\"n\":1}"),
        ("bad", "not json \x00\n at all"),
        ("ok-2", "{\"n\":2}"),
        ("ok-3", "{\"n\":3}"),
    ];
    send_all(&bus, "generation.completed.org1", messages).await?;

    let consumer = bus.consumer(ConsumerName::ProjectorCompleted).await?;
    let mut processed = Vec::new();
    let mut dead = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    // Fetch one at a time so the poison message is met mid-stream.
    while processed.len() < 3 && Instant::now() < deadline {
        for d in consumer.fetch(1, Duration::from_millis(500)).await? {
            match serde_json::from_slice::<serde_json::Value>(d.payload()) {
                Ok(v) => processed.push(v["n"].as_i64().unwrap_or(-1)),
                Err(e) => {
                    let reason = DeadLetterReason::new(
                        "malformed_json",
                        format!("payload is not JSON:\n{e}"),
                    );
                    bus.dead_letter(DeadLetterService::Worker, &d, &reason)
                        .await?;
                    // A redelivered poison message is dead-lettered once.
                    bus.dead_letter(DeadLetterService::Worker, &d, &reason)
                        .await?;
                    dead += 1;
                }
            }
            d.ack().await?;
        }
    }
    assert_eq!(processed, vec![1, 2, 3]);
    assert_eq!(dead, 1);
    assert_pending(&bus, ConsumerName::ProjectorCompleted, 0).await?;

    // Exactly one dead letter, with the reason headers and the original body.
    assert_eq!(bus.stream_last_sequence(StreamKind::DeadLetter).await?, 1);
    let dl = bus
        .replay_consumer(StreamKind::DeadLetter, &bus.subject("deadletter.worker"))
        .await?;
    let got = fetch_n(&dl, 1).await?;
    assert_eq!(got.len(), 1);
    let msg = &got[0];
    assert_eq!(msg.subject(), "tally.deadletter.worker");
    assert_eq!(msg.payload(), b"not json \x00\n at all");
    let h = msg.headers().expect("headers");
    let header = |name: &str| h.get(name).map(|v| v.as_str().to_string());
    assert_eq!(
        header("Tally-Dead-Letter-Reason").as_deref(),
        Some("malformed_json")
    );
    let detail = header("Tally-Dead-Letter-Detail").unwrap();
    assert!(detail.starts_with("payload is not JSON: "), "{detail}");
    assert!(!detail.contains('\n'));
    assert_eq!(
        header("Tally-Original-Subject").as_deref(),
        Some("tally.generation.completed.org1")
    );
    assert_eq!(header("Tally-Original-Stream-Seq").as_deref(), Some("2"));
    assert_eq!(header("Tally-Original-Msg-Id").as_deref(), Some("bad"));
    assert_eq!(msg.msg_id(), Some("dl-worker-TALLY_GENERATIONS-2"));
    assert_eq!(
        header("Tally-Dead-Letter-Service").as_deref(),
        Some("worker")
    );
    Ok(())
}

#[tokio::test]
async fn dead_letter_detail_is_bounded() -> anyhow::Result<()> {
    let (_server, bus) = fresh_bus().await?;
    send(&bus, "cost.unresolved.o", "u1", "x").await?;
    let consumer = bus.consumer(ConsumerName::ProjectorCosts).await?;
    let got = fetch_n(&consumer, 1).await?;
    let long = "line\n".repeat(2000);
    let reason = DeadLetterReason::new("schema_violation", long);
    bus.dead_letter(DeadLetterService::Projector, &got[0], &reason)
        .await?;
    got[0].ack().await?;
    let dl = bus.replay_consumer(StreamKind::DeadLetter, "").await?;
    let msgs = fetch_n(&dl, 1).await?;
    let detail = msgs[0]
        .headers()
        .and_then(|h| h.get("Tally-Dead-Letter-Detail"))
        .map(|v| v.as_str().to_string())
        .unwrap();
    assert!(detail.len() <= 1024);
    assert!(!detail.contains('\n'));
    Ok(())
}
