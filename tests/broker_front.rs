//! The embedded broker against hostile clients on the same network: none can
//! stop it, take the worker's client id, forge the worker's statuses or
//! presence, publish beyond its role, or lose its connection by sending one
//! packet too many bytes. The real binary with the example config, attacked
//! with raw MQTT packets where a client library would not send them.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The example config's worker id and group.
const WORKER_ID: &str = "lab-1";

/// CONNACK accepting a clean session (MQTT 5 with no properties, 3.1.1).
fn accepted(connack: &[u8]) -> bool {
    connack.len() >= 4 && connack[0] == 0x20 && connack[3] == 0
}

/// A persistent session alone in a shared group on the tasks topic, leaving
/// with a request unacked, panicked rumqttd's router and exited the process
/// (70). Now the process keeps running and the running task ends normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_shared_member_leaving_unacked_does_not_stop_the_appliance() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let (mut appliance, observer) = Appliance::lab().await;
    let port = appliance.ports.v5;
    observer
        .submit(
            json!({"task_id": "long", "playbook": "slow.yml", "inventory": "inventory.yml",
                       "extra_vars": {"seconds": 3}}),
        )
        .await;
    observer.wait_state("long", "running", DEADLINE).await;

    let mut options = MqttOptions::new("hostile-member", "127.0.0.1", port);
    options
        .set_clean_start(false)
        .set_manual_acks(true)
        .set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
            session_expiry_interval: Some(3600),
            ..Default::default()
        });
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .subscribe("$share/mine/ansible/lab/tasks", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut received = false;
    while !received {
        match tokio::time::timeout(DEADLINE, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                observer
                    .submit(json!({"task_id": "bait", "playbook": "hello.yml",
                                   "inventory": "inventory.yml"}))
                    .await;
            }
            Ok(Ok(Event::Incoming(Packet::Publish(_)))) => received = true,
            Ok(Ok(_)) => {}
            other => panic!("the hostile member never got the request: {other:?}"),
        }
    }
    // Leave without acking.
    drop(eventloop);
    drop(client);

    assert_eq!(
        observer.wait_final("long", DEADLINE).await["state"],
        "success"
    );
    assert_eq!(
        observer.wait_final("bait", DEADLINE).await["state"],
        "success"
    );
    assert!(appliance.worker.is_running(), "{}", appliance.worker.log());
    let (_later, connack) = RawMqtt::connect(port, true, "later", None).await;
    assert!(accepted(&connack), "{connack:?}");
    assert!(!appliance.worker.log().contains("panicked"));
}

/// A client with the worker's client id threw the worker out (and the
/// worker it, about once a second). Now it gets CONNACK 0x85 (MQTT 5) or
/// "identifier rejected" (3.1.1), and the worker's connection is untouched.
/// The same holds for the client id of the in-process link its statuses
/// take into the broker: a namesake would take that link over, and no
/// status would reach a subscriber again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_client_ids_are_refused_and_the_worker_keeps_its_connections() {
    let (appliance, observer) = Appliance::lab().await;
    let status_link = format!("{WORKER_ID}:statuses");
    for id in [WORKER_ID, WORKER_ID, status_link.as_str()] {
        let (mut v5, connack) = RawMqtt::connect(appliance.ports.v5, true, id, None).await;
        assert_eq!(connack, [0x20, 3, 0, 0x85, 0]);
        assert_eq!(v5.read().await, None, "the connection is closed after");
        let (_v4, connack) = RawMqtt::connect(appliance.ports.v4, false, id, None).await;
        assert_eq!(connack, [0x20, 2, 0, 0x02]);
    }
    observer
        .submit(json!({"task_id": "meanwhile", "playbook": "hello.yml",
                       "inventory": "inventory.yml"}))
        .await;
    assert_eq!(
        observer.wait_final("meanwhile", DEADLINE).await["state"],
        "success"
    );
    let metrics = tokio::task::spawn_blocking(move || {
        let metrics = appliance.http.metrics();
        (appliance, metrics)
    })
    .await
    .unwrap();
    let (appliance, metrics) = metrics;
    assert_eq!(metrics.value("ansible_worker_mqtt_reconnects_total"), 0.0);
    assert_eq!(
        metrics.value("ansible_worker_broker_refusals_total{reason=\"client_id\"}"),
        6.0
    );
    let log = appliance.worker.log();
    assert_eq!(log.matches("connected to the broker").count(), 1, "{log}");
    assert!(log.contains("client_id=\"lab-1\""), "{log}");
}

/// Anyone could publish a retained status or presence document that every
/// MQTT subscriber then took for the worker's. Now such publishes are
/// refused (0x87 for MQTT 5, dropped yet acknowledged for 3.1.1), counted,
/// and a fresh subscriber sees only the worker's own documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_statuses_and_presence_are_refused_and_counted() {
    let (appliance, observer) = Appliance::lab().await;
    observer
        .submit(json!({"task_id": "real", "playbook": "hello.yml", "inventory": "inventory.yml"}))
        .await;
    assert_eq!(
        observer.wait_final("real", DEADLINE).await["state"],
        "success"
    );
    let forged = br#"{"task_id":"real","state":"failed","forged":true}"#;
    let status = "ansible/lab/tasks/real/status";
    let presence = format!("ansible/lab/workers/{WORKER_ID}");

    let (mut v5, connack) = RawMqtt::connect(appliance.ports.v5, true, "forger5", None).await;
    assert!(accepted(&connack), "{connack:?}");
    v5.publish(status, 1, true, 1, forged).await;
    assert_eq!(v5.read().await.unwrap(), [0x40, 3, 0, 1, 0x87]);
    v5.publish(&presence, 2, true, 2, forged).await;
    assert_eq!(v5.read().await.unwrap(), [0x50, 3, 0, 2, 0x87]);
    v5.publish("ansible/lab/tasks/real/events", 0, false, 0, b"{}")
        .await;
    v5.ping().await;

    let (mut v4, connack) = RawMqtt::connect(appliance.ports.v4, false, "forger4", None).await;
    assert!(accepted(&connack), "{connack:?}");
    v4.publish(status, 1, true, 3, forged).await;
    assert_eq!(v4.read().await.unwrap(), [0x40, 2, 0, 3]);
    v4.publish(status, 2, true, 4, forged).await;
    assert_eq!(v4.read().await.unwrap(), [0x50, 2, 0, 4]);
    v4.send(&[0x62, 2, 0, 4]).await;
    assert_eq!(v4.read().await.unwrap(), [0x70, 2, 0, 4]);
    v4.ping().await;

    // A Will is published by the broker on the client's behalf.
    for (port, v5, connack) in [
        (appliance.ports.v5, true, vec![0x20, 3, 0, 0x87, 0]),
        (appliance.ports.v4, false, vec![0x20, 2, 0, 0x05]),
    ] {
        let mut raw = RawMqtt::open(port, v5).await;
        let will = Some((presence.as_str(), forged.as_slice()));
        raw.send(&connect_packet(v5, "willer", true, None, None, will))
            .await;
        assert_eq!(raw.read().await.unwrap(), connack);
    }

    // A fresh subscriber gets the retained documents: the worker's only.
    let fresh = Observer::start(appliance.ports.v5, "lab").await;
    fresh
        .submit(json!({"task_id": "after", "playbook": "hello.yml", "inventory": "inventory.yml"}))
        .await;
    assert_eq!(
        fresh.wait_final("after", DEADLINE).await["state"],
        "success"
    );
    let real = fresh.statuses("real");
    assert!(!real.is_empty(), "the retained status is there");
    assert!(real.iter().all(|doc| doc["state"] == "success"), "{real:?}");
    assert!(
        fresh
            .presence(WORKER_ID)
            .iter()
            .all(|doc| doc.get("forged").is_none() && doc["online"] != false),
        "{:?}",
        fresh.presence(WORKER_ID)
    );
    let (appliance, metrics) = tokio::task::spawn_blocking(move || {
        let metrics = appliance.http.metrics();
        (appliance, metrics)
    })
    .await
    .unwrap();
    assert_eq!(
        metrics.value("ansible_worker_broker_refusals_total{reason=\"worker_topic\"}"),
        7.0
    );
    assert!(appliance.worker.log().contains("client_id=\"forger5\""));
}

/// A publish over `max_payload_size` reset the connection (losing what was
/// queued behind it). Now it is refused with a reason code (MQTT 5: 0x97
/// Quota exceeded) and the same connection goes on publishing requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_publish_is_refused_and_the_connection_kept() {
    let (appliance, observer) = Appliance::lab().await;
    let too_big = vec![b'x'; 1_048_577];
    for (port, v5, id) in [
        (appliance.ports.v5, true, "big-5"),
        (appliance.ports.v4, false, "big-4"),
    ] {
        let (mut raw, connack) = RawMqtt::connect(port, v5, &format!("sender-{id}"), None).await;
        assert!(accepted(&connack), "{connack:?}");
        raw.publish("ansible/lab/tasks", 1, false, 7, &too_big)
            .await;
        let answer = raw.read().await.expect("the connection was dropped");
        match v5 {
            true => assert_eq!(answer, [0x40, 3, 0, 7, 0x97]),
            false => assert_eq!(answer, [0x40, 2, 0, 7]),
        }
        let request = json!({"task_id": id, "playbook": "hello.yml", "inventory": "inventory.yml"});
        raw.publish(
            "ansible/lab/tasks",
            1,
            false,
            8,
            request.to_string().as_bytes(),
        )
        .await;
        let ack = raw.read().await.expect("the connection was dropped");
        assert_eq!(&ack[..4], [0x40, ack[1], 0, 8], "{ack:?}");
        assert_eq!(observer.wait_final(id, DEADLINE).await["state"], "success");
    }
    // Only a PUBLISH can be refused alone; any other packet that large ends
    // the connection, over MQTT 5 with the reason.
    let (mut raw, _) = RawMqtt::connect(appliance.ports.v5, true, "big-subscriber", None).await;
    let filter = vec![b'a'; 65_000];
    let mut body = vec![0, 1, 0];
    for _ in 0..17 {
        body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
        body.extend_from_slice(&filter);
        body.push(1);
    }
    let mut subscribe = vec![0x82];
    let mut len = body.len();
    while len > 0 {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        subscribe.push(if len > 0 { byte | 0x80 } else { byte });
    }
    subscribe.extend_from_slice(&body);
    // Its start is enough to tell (and leaves no unread bytes whose close
    // would reset the connection before the answer is read).
    raw.send(&subscribe[..100]).await;
    assert_eq!(raw.read().await, Some(vec![0xe0, 1, 0x95]));
    assert_eq!(raw.read().await, None);
}

/// With `[broker.users]` and `[broker.roles]`: an observer may subscribe but
/// not publish requests, a controller may; a wrong login gets CONNACK 0x86
/// (MQTT 5) or "bad user name or password" (3.1.1) and is logged. An
/// observer follows a task's events topic too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_cannot_publish_and_wrong_logins_are_refused() {
    let appliance = Appliance::start(&[("MQTT_PASSWORD", "lab-secret")], |dir, ports| {
        let config = with_broker_logins(
            &example_config(dir, ports),
            "watcher = \"look\"\nops = \"run\"",
        );
        config + "\n[broker.roles]\nwatcher = \"observer\"\nops = \"controller\"\n"
    });
    let port = appliance.ports.v5;
    let watcher = Observer::start_with(port, "lab", Some(("watcher", "look"))).await;
    let (mut raw, connack) =
        RawMqtt::connect(port, true, "watcher-raw", Some(("watcher", "look"))).await;
    assert!(accepted(&connack), "{connack:?}");
    let request =
        json!({"task_id": "by-watcher", "playbook": "hello.yml", "inventory": "inventory.yml"});
    raw.publish(
        "ansible/lab/tasks",
        1,
        false,
        1,
        request.to_string().as_bytes(),
    )
    .await;
    assert_eq!(raw.read().await.unwrap(), [0x40, 3, 0, 1, 0x87]);

    let events = "ansible/lab/tasks/by-ops/events";
    let watched = Recorder::start_with(port, events, Some(("watcher", "look"))).await;
    let ops = Observer::start_with(port, "lab", Some(("ops", "run"))).await;
    ops.submit(json!({"task_id": "by-ops", "playbook": "hello.yml", "inventory": "inventory.yml"}))
        .await;
    assert_eq!(ops.wait_final("by-ops", DEADLINE).await["state"], "success");
    let recap = |docs: Vec<Value>| {
        docs.iter().any(|doc| {
            doc["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("PLAY RECAP"))
        })
    };
    assert!(wait_for(DEADLINE, || recap(watched.docs_on(events))).await);
    let seqs: Vec<u64> = watched
        .docs_on(events)
        .iter()
        .map(|doc| doc["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    // The watcher saw the controller's task, and its own never existed.
    assert!(
        wait_for(DEADLINE, || watcher
            .states("by-ops")
            .contains(&"success".to_owned()))
        .await
    );
    assert!(watcher.statuses("by-watcher").is_empty());

    let (_v5, connack) = RawMqtt::connect(port, true, "guesser-5", Some(("ops", "nope"))).await;
    assert_eq!(connack, [0x20, 3, 0, 0x86, 0]);
    let (_v4, connack) = RawMqtt::connect(appliance.ports.v4, false, "guesser-4", None).await;
    assert_eq!(connack, [0x20, 2, 0, 0x04]);
    let log = appliance.worker.log();
    assert!(
        log.contains("client_id=\"guesser-5\"") && log.contains("client_id=\"guesser-4\""),
        "{log}"
    );
    assert!(log.contains("client_id=\"watcher-raw\""), "{log}");
    assert!(!log.contains("nope") && !log.contains("lab-secret"));
}

/// rumqttd cannot write MQTT 5 properties to an MQTT 3.1.1 client: any
/// client publishing with one (a user property, say) to a topic a 3.1.1
/// client follows panicked the 3.1.1 listener's thread, and the panic
/// policy ended the whole appliance (exit 70). Now only that subscriber's
/// connection is lost: the appliance runs on, 3.1.1 clients connect and
/// receive as before, and tasks run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_property_bound_for_a_mqtt311_subscriber_does_not_stop_the_appliance() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::{AsyncClient, MqttOptions};

    let (appliance, observer) = Appliance::lab().await;
    let (_victim, mut victim) = V311Subscriber::start(appliance.ports.v4, "shared/news").await;
    let mut options = MqttOptions::new("property-sender", "127.0.0.1", appliance.ports.v5);
    options.set_max_packet_size(Some(1 << 20));
    let (sender, mut eventloop) = AsyncClient::new(options, 10);
    let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let properties = PublishProperties {
        user_properties: vec![("a".into(), "b".into())],
        ..Default::default()
    };
    sender
        .publish_with_properties("shared/news", QoS::AtLeastOnce, false, "hi", properties)
        .await
        .unwrap();
    // The victim gets the message without the property, or loses its
    // connection.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match victim.eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    driver.abort();

    let mut appliance = appliance;
    assert!(appliance.worker.is_running(), "{}", appliance.worker.log());
    let (_later, mut later) = V311Subscriber::start(appliance.ports.v4, "shared/plain").await;
    mosquitto_pub_v5(appliance.ports.v5, "shared/plain", "plain");
    let received = tokio::time::timeout(DEADLINE, later.next_publish())
        .await
        .expect("a 3.1.1 client still gets messages");
    assert_eq!(received, b"plain");
    observer
        .submit(json!({"task_id": "after", "playbook": "hello.yml", "inventory": "inventory.yml"}))
        .await;
    assert_eq!(
        observer.wait_final("after", DEADLINE).await["state"],
        "success"
    );
    assert!(appliance.worker.is_running());
}

/// An MQTT 3.1.1 client (rumqttc's v4 API) subscribed to one topic.
struct V311Subscriber {
    eventloop: rumqttc::EventLoop,
}

impl V311Subscriber {
    async fn start(port: u16, topic: &str) -> (rumqttc::AsyncClient, V311Subscriber) {
        let options = rumqttc::MqttOptions::new(unique("v311"), "127.0.0.1", port);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
        client
            .subscribe(topic, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            let event = tokio::time::timeout(DEADLINE, eventloop.poll())
                .await
                .expect("subscribed in time")
                .expect("connected");
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = event {
                return (client, V311Subscriber { eventloop });
            }
        }
    }

    /// The payload of the next message; panics if the connection fails.
    async fn next_publish(&mut self) -> Vec<u8> {
        loop {
            let event = self.eventloop.poll().await.expect("the connection holds");
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)) = event {
                return publish.payload.to_vec();
            }
        }
    }
}

/// Publishes `payload` to `topic` at QoS 1 with the MQTT 5 command-line
/// client (no properties).
fn mosquitto_pub_v5(port: u16, topic: &str, payload: &str) {
    let status = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
        .args(["-q", "1", "-t", topic, "-m", payload])
        .status()
        .unwrap();
    assert!(status.success());
}
