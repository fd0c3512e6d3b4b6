//! The appliance's statuses as subscribers of its embedded broker get them.
//! The worker hands them to rumqttd in-process (no socket), and what leaves
//! the broker must be what PROTOCOL.md promises: retained, at the
//! subscription's QoS, with Message Expiry when `worker.status_expiry` is
//! set, and on a request's Response Topic with its Correlation Data.

mod common;

use bytes::Bytes;
use common::*;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde_json::{Value, json};

/// A client subscribed to `filter` at QoS 1 (its SUBACK received).
async fn subscribed(port: u16, filter: &str) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(unique("statuses"), "127.0.0.1", port);
    options.set_max_packet_size(Some(1 << 20));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        match next_event(&mut eventloop).await {
            Event::Incoming(Packet::SubAck(_)) => return (client, eventloop),
            _ => continue,
        }
    }
}

async fn next_event(eventloop: &mut EventLoop) -> Event {
    tokio::time::timeout(DEADLINE, eventloop.poll())
        .await
        .expect("the broker answered in time")
        .expect("the connection holds")
}

/// The next publish that arrives.
async fn next_publish(eventloop: &mut EventLoop) -> Publish {
    loop {
        if let Event::Incoming(Packet::Publish(publish)) = next_event(eventloop).await {
            return publish;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_leave_the_embedded_broker_retained_expiring_and_on_the_response_topic() {
    let appliance = Appliance::start(&[], |dir, ports| {
        replace_present(
            &example_config(dir, ports),
            "status_expiry = 0",
            "status_expiry = 60",
        )
    });
    let port = appliance.ports.v5;
    let task_id = unique("linked");
    let reply_topic = format!("replies/{task_id}");
    let (requester, mut replies) = subscribed(port, &reply_topic).await;
    let request =
        json!({"task_id": task_id, "playbook": "hello.yml", "inventory": "inventory.yml"});
    let properties = PublishProperties {
        response_topic: Some(reply_topic.clone()),
        correlation_data: Some(Bytes::from_static(b"ticket-7")),
        ..PublishProperties::default()
    };
    requester
        .publish_with_properties(
            "ansible/lab/tasks",
            QoS::ExactlyOnce,
            false,
            request.to_string(),
            properties,
        )
        .await
        .unwrap();

    // Every status on the route, each with the request's correlation data.
    let mut states = Vec::new();
    loop {
        let reply = next_publish(&mut replies).await;
        assert!(!reply.retain, "replies are not retained");
        let props = reply.properties.clone().unwrap_or_default();
        assert_eq!(props.correlation_data.as_deref(), Some(&b"ticket-7"[..]));
        let doc: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_valid_status(&doc);
        assert_eq!(doc["task_id"], task_id.as_str());
        states.push(doc["state"].as_str().unwrap().to_owned());
        if is_final(&doc) {
            assert_eq!(
                props.message_expiry_interval.map(|s| s > 0 && s <= 60),
                Some(true)
            );
            break;
        }
    }
    // Progress of the run comes as further `running` statuses.
    assert_eq!(states.first().map(String::as_str), Some("queued"));
    assert_eq!(states.last().map(String::as_str), Some("success"));
    assert!(states[1..states.len() - 1].iter().all(|s| s == "running"));
    assert!(states.len() >= 3, "{states:?}");

    // A subscriber coming later gets the final status, retained, at its QoS.
    let status_topic = format!("ansible/lab/tasks/{task_id}/status");
    let (_late, mut late) = subscribed(port, &status_topic).await;
    let retained = next_publish(&mut late).await;
    assert!(retained.retain);
    assert_eq!(retained.qos, QoS::AtLeastOnce);
    let expiry = retained
        .properties
        .and_then(|props| props.message_expiry_interval);
    assert!(matches!(expiry, Some(1..=60)), "{expiry:?}");
    let doc: Value = serde_json::from_slice(&retained.payload).unwrap();
    assert_eq!(doc["state"], "success");
    assert_eq!(doc["task_id"], task_id.as_str());
}
