//! Delivery of requests and statuses across cut connections: a PUBREL the
//! broker resends after a cut does not wedge the worker, and final statuses
//! expire on the broker with `worker.status_expiry`. `ledger.yml` counts real
//! runs.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// A TCP relay between the worker and Mosquitto that, once armed, cuts the
/// connection right after forwarding the worker's first PUBREC, so the
/// broker's PUBREL never reaches it: the broker sends it again when the
/// session resumes.
struct PubrecCutter {
    port: u16,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl PubrecCutter {
    fn start(broker_port: u16) -> Self {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = std::sync::Arc::new(AtomicBool::new(false));
        let arm = armed.clone();
        std::thread::spawn(move || {
            for worker in listener.incoming().flatten() {
                let Ok(broker) = TcpStream::connect(("127.0.0.1", broker_port)) else {
                    continue;
                };
                let cut = std::sync::Arc::new(AtomicBool::new(false));
                let (mut from_broker, mut to_worker) =
                    (broker.try_clone().unwrap(), worker.try_clone().unwrap());
                let stop = cut.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n @ 1..) = std::io::Read::read(&mut from_broker, &mut buf) {
                        if stop.load(Ordering::SeqCst)
                            || std::io::Write::write_all(&mut to_worker, &buf[..n]).is_err()
                        {
                            break;
                        }
                    }
                    let _ = to_worker.shutdown(std::net::Shutdown::Both);
                });
                let arm = arm.clone();
                std::thread::spawn(move || relay_packets(worker, broker, &arm, &cut));
            }
        });
        PubrecCutter { port, armed }
    }
}

/// Copies whole MQTT packets from `worker` to `broker`; an armed PUBREC is
/// the last one (the reverse direction stops first, so no PUBREL follows).
fn relay_packets(
    mut worker: std::net::TcpStream,
    mut broker: std::net::TcpStream,
    armed: &std::sync::atomic::AtomicBool,
    cut: &std::sync::atomic::AtomicBool,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    loop {
        let mut packet = vec![0u8; 1];
        if worker.read_exact(&mut packet).is_err() {
            break;
        }
        let mut length = 0usize;
        for shift in (0..4).map(|n| 7 * n) {
            let mut byte = [0u8; 1];
            if worker.read_exact(&mut byte).is_err() {
                return;
            }
            packet.push(byte[0]);
            length |= usize::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let start = packet.len();
        packet.resize(start + length, 0);
        if worker.read_exact(&mut packet[start..]).is_err() {
            break;
        }
        let is_pubrec = packet[0] >> 4 == 5;
        let last = is_pubrec && armed.swap(false, Ordering::SeqCst);
        if last {
            cut.store(true, Ordering::SeqCst);
        }
        if broker.write_all(&packet).is_err() || last {
            break;
        }
    }
    let _ = broker.shutdown(std::net::Shutdown::Both);
    let _ = worker.shutdown(std::net::Shutdown::Both);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_resent_after_a_cut_connection_does_not_wedge_the_worker() {
    let broker = Mosquitto::start();
    let cutter = PubrecCutter::start(broker.port);
    let _worker = WorkerSetup::new("cut", cutter.port).start();
    let observer = Observer::start(broker.port, "cut").await;
    let ledger = Ledger::new();
    let first = unique("cut-first");
    cutter
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    observer
        .submit(ledger_request(&first, &ledger.path, 0))
        .await;
    assert!(
        wait_for(DEADLINE, || !cutter
            .armed
            .load(std::sync::atomic::Ordering::SeqCst))
        .await,
        "the worker never acknowledged the request"
    );
    assert_eq!(
        observer.wait_final(&first, DEADLINE).await["state"],
        "success"
    );
    // The connection is healthy again: the next request arrives and runs.
    let second = unique("cut-second");
    observer
        .submit(ledger_request(&second, &ledger.path, 0))
        .await;
    assert_eq!(
        observer.wait_final(&second, DEADLINE).await["state"],
        "success"
    );
    let counts = ledger_counts(&ledger.path);
    assert_eq!(
        (counts.get(&first), counts.get(&second)),
        (Some(&1), Some(&1))
    );
}

/// The retained status of `task_id` a new subscriber gets now, with its
/// Message Expiry Interval. Deterministic: a probe message published after
/// subscribing comes back after every retained message.
async fn retained_status(port: u16, group: &str, task_id: &str) -> Option<(Value, Option<u32>)> {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut options = MqttOptions::new(unique("retained"), "127.0.0.1", port);
    options.set_max_packet_size(Some(4 * 1024 * 1024));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let status_topic = format!("ansible/{group}/tasks/{task_id}/status");
    let probe_topic = unique("probe");
    client
        .subscribe(&status_topic, QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe(&probe_topic, QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut found = None;
    let mut subacks = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .expect("the probe came back")
            .unwrap();
        match event {
            Event::Incoming(Packet::SubAck(_)) => {
                subacks += 1;
                if subacks == 2 {
                    client
                        .publish(&probe_topic, QoS::AtLeastOnce, false, "probe")
                        .await
                        .unwrap();
                }
            }
            Event::Incoming(Packet::Publish(p)) if p.topic == probe_topic.as_bytes() => break,
            Event::Incoming(Packet::Publish(p)) => {
                let expiry = p.properties.and_then(|props| props.message_expiry_interval);
                found = Some((serde_json::from_slice(&p.payload).unwrap(), expiry));
            }
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_statuses_expire_after_status_expiry() {
    let broker = Mosquitto::start();
    let mut setup = WorkerSetup::new("expiry", broker.port);
    setup.extra_worker = "status_expiry = 3".into();
    let _worker = setup.start();
    let observer = Observer::start(broker.port, "expiry").await;
    let ledger = Ledger::new();
    let id = unique("expiry");
    observer.submit(ledger_request(&id, &ledger.path, 0)).await;
    observer.wait_final(&id, DEADLINE).await;
    let (doc, expiry) = retained_status(broker.port, "expiry", &id)
        .await
        .expect("the final status is retained at first");
    assert_eq!(doc["state"], "success");
    assert!(matches!(expiry, Some(2..=3)), "{expiry:?}");
    // Then the broker forgets it.
    let mut gone = false;
    for _ in 0..100 {
        if retained_status(broker.port, "expiry", &id).await.is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone, "the final status was still retained after its expiry");
}
