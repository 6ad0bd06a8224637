//! Each service of the local stack answers, read through levee's own signal clients and the
//! AWS SDK: Prometheus, RabbitMQ, PostgreSQL streaming replication, and moto (ECS, RDS).

mod common;

use std::time::Duration;

use common::{aws, create_db_instance, env, eventually};
use levee::signals::{SignalError, postgres, prometheus::Prometheus, rabbitmq::RabbitMq};

#[tokio::test]
async fn prometheus_answers_promql() {
    let prom = Prometheus::new(&env("LEVEE_PROMETHEUS_URL")).unwrap();
    // Prometheus scrapes itself every 5 s; `up` exists after the first scrape.
    let sample = eventually(
        Duration::from_secs(30),
        "up{job=prometheus}",
        || prom.instant(r#"up{job="prometheus"}"#),
        Result::is_ok,
    )
    .await
    .unwrap();
    assert_eq!(sample.value, 1.0);
    let scalar = prom.instant("1 + 2").await.unwrap();
    assert_eq!(scalar.value, 3.0);
    // A query Prometheus refuses comes back as an error carrying its message.
    let err = prom.instant("sum(rate(x[1m]").await.unwrap_err();
    assert!(matches!(err, SignalError::BadResponse { .. }), "{err}");
    // Several series are refused rather than silently picking one.
    let err = prom.instant(r#"{__name__=~"prometheus_http_requests_total"}"#).await;
    assert!(err.is_err(), "many series must not pass as one: {err:?}");
}

#[tokio::test]
async fn unreachable_prometheus_is_a_clear_error() {
    let port = common::free_port();
    let prom = Prometheus::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let err = prom.instant("up").await.unwrap_err();
    assert!(matches!(err, SignalError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

#[tokio::test]
async fn rabbitmq_reports_queue_depth_after_publishing() {
    let base = env("LEVEE_RABBITMQ_URL");
    let (user, pass) = (env("LEVEE_RABBITMQ_USER"), env("LEVEE_RABBITMQ_PASSWORD"));
    let queue = format!("smoke-{}", std::process::id());
    let http = reqwest::Client::new();
    let put = http
        .put(format!("{base}/api/queues/%2F/{queue}"))
        .basic_auth(&user, Some(&pass))
        .json(&serde_json::json!({"durable": false, "auto_delete": false}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "declare queue: {}", put.status());
    for i in 0..25 {
        let res = http
            .post(format!("{base}/api/exchanges/%2F/amq.default/publish"))
            .basic_auth(&user, Some(&pass))
            .json(&serde_json::json!({"properties": {}, "routing_key": queue, "payload": format!("task {i}"), "payload_encoding": "string"}))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["routed"], true);
    }
    let rmq = RabbitMq::new(&base, &user, &pass).unwrap();
    // The management API refreshes queue statistics every few seconds.
    let stats = eventually(
        Duration::from_secs(20),
        "25 ready messages",
        || rmq.queue("/", &queue),
        |s| s.as_ref().is_ok_and(|s| s.ready == 25),
    )
    .await
    .unwrap();
    assert_eq!(stats.backlog(), 25);
    assert_eq!(stats.unacked, 0);
    let missing = rmq.queue("/", "no-such-queue").await.unwrap_err();
    assert!(matches!(missing, SignalError::NotFound { .. }), "{missing}");
    let denied = RabbitMq::new(&base, &user, "wrong").unwrap().queue("/", &queue).await.unwrap_err();
    assert!(denied.to_string().contains("401"), "{denied}");
    http.delete(format!("{base}/api/queues/%2F/{queue}")).basic_auth(&user, Some(&pass)).send().await.unwrap();
}

#[tokio::test]
async fn postgres_replica_lag_appears_when_replay_is_paused() {
    let (primary, replica) = (env("LEVEE_PG_PRIMARY"), env("LEVEE_PG_REPLICA"));
    let (p, conn) = tokio_postgres::connect(&primary, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let (r, conn) = tokio_postgres::connect(&replica, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let table = format!("smoke_{}", std::process::id());
    p.batch_execute(&format!("CREATE TABLE IF NOT EXISTS {table} (id serial, pad text)")).await.unwrap();

    r.batch_execute("SELECT pg_wal_replay_pause()").await.unwrap();
    p.batch_execute(&format!("INSERT INTO {table} (pad) SELECT repeat('x', 200) FROM generate_series(1, 5000)"))
        .await
        .unwrap();
    let lag = eventually(
        Duration::from_secs(10),
        "replica lag in bytes",
        || postgres::replica_lag(&replica),
        |l| l.as_ref().is_ok_and(|l| l.bytes > 100_000.0),
    )
    .await
    .unwrap();
    assert!(lag.seconds >= 0.0);

    r.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
    eventually(
        Duration::from_secs(10),
        "lag cleared",
        || postgres::replica_lag(&replica),
        |l| l.as_ref().is_ok_and(|l| l.bytes == 0.0),
    )
    .await
    .unwrap();
    p.batch_execute(&format!("DROP TABLE {table}")).await.unwrap();

    let err = postgres::replica_lag(&primary).await.unwrap_err();
    assert!(err.to_string().contains("is a primary"), "{err}");
}

#[tokio::test]
async fn moto_serves_rds_describe_db_instances() {
    let rds = aws_sdk_rds::Client::new(&aws().await);
    let id = format!("smoke-db-{}", std::process::id());
    create_db_instance(&rds, &id).await;
    let out = rds.describe_db_instances().db_instance_identifier(&id).send().await.expect("DescribeDBInstances");
    let instances = out.db_instances();
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].db_instance_identifier(), Some(id.as_str()));
    assert_eq!(instances[0].engine(), Some("postgres"));
    rds.delete_db_instance().db_instance_identifier(&id).skip_final_snapshot(true).send().await.unwrap();
}

#[tokio::test]
async fn moto_serves_ecs_describe_services() {
    let ecs = aws_sdk_ecs::Client::new(&aws().await);
    let cluster = format!("smoke-{}", std::process::id());
    ecs.create_cluster().cluster_name(&cluster).send().await.expect("CreateCluster");
    let container = aws_sdk_ecs::types::ContainerDefinition::builder().name("web").image("nginx").memory(128).build();
    ecs.register_task_definition()
        .family("web")
        .container_definitions(container)
        .send()
        .await
        .expect("RegisterTaskDefinition");
    ecs.create_service()
        .cluster(&cluster)
        .service_name("web")
        .task_definition("web")
        .desired_count(3)
        .send()
        .await
        .expect("CreateService");
    let out = ecs.describe_services().cluster(&cluster).services("web").send().await.expect("DescribeServices");
    let services = out.services();
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].service_name(), Some("web"));
    assert_eq!(services[0].desired_count(), 3);
}
