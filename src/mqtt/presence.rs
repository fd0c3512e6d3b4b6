//! Worker presence (PROTOCOL.md extension): a retained document on
//! `P/G/workers/<worker_id>` saying the worker is online and how loaded it is,
//! and the MQTT will that marks it offline when the process dies.
//!
//! Load changes are coalesced: the document is refreshed at most every
//! [`REFRESH_INTERVAL`], and again after every reconnect.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::LastWill;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::table::TaskTable;
use crate::transport::LinkState;

/// How often, at most, the presence document changes.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// What the presence document says about this worker.
#[derive(Debug, Clone)]
pub struct Presence {
    /// The presence topic.
    pub topic: String,
    /// This worker.
    pub worker_id: String,
    /// Parallel runs.
    pub concurrency: usize,
    /// When the process started.
    pub started_at: DateTime<Utc>,
}

impl Presence {
    fn document(&self, state: &str, queued: usize, running: usize) -> Vec<u8> {
        json!({
            "worker_id": self.worker_id,
            "state": state,
            "version": env!("CARGO_PKG_VERSION"),
            "concurrency": self.concurrency,
            "queued": queued,
            "running": running,
            "started_at": self.started_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        })
        .to_string()
        .into_bytes()
    }

    /// The retained online document.
    pub fn online(&self, queued: usize, running: usize) -> Vec<u8> {
        self.document("online", queued, running)
    }

    /// The retained offline document.
    pub fn offline(&self) -> Vec<u8> {
        self.document("offline", 0, 0)
    }

    /// The will the broker publishes (retained) when the connection dies
    /// without a DISCONNECT.
    pub fn last_will(&self) -> LastWill {
        LastWill::new(&self.topic, self.offline(), QoS::AtLeastOnce, true, None)
    }
}

/// Keeps the online document current until `stop`, then publishes the
/// offline one (a clean DISCONNECT does not fire the will).
pub async fn publish_presence(
    client: AsyncClient,
    presence: Presence,
    table: TaskTable,
    mut link: watch::Receiver<LinkState>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(REFRESH_INTERVAL);
    let mut published: Option<(u64, (usize, usize))> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = link.changed() => if changed.is_err() { break },
            _ = stop.cancelled() => break,
        }
        let state = *link.borrow();
        let load = table.load();
        if state.up && published != Some((state.generation, load)) {
            let (queued, running) = load;
            send(&client, &presence.topic, presence.online(queued, running)).await;
            published = Some((state.generation, load));
        }
    }
    send(&client, &presence.topic, presence.offline()).await;
}

async fn send(client: &AsyncClient, topic: &str, payload: Vec<u8>) {
    if let Err(e) = client.publish(topic, QoS::AtLeastOnce, true, payload).await {
        tracing::warn!("cannot queue the presence document: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_state_and_load() {
        let presence = Presence {
            topic: "ansible/lab/workers/w1".into(),
            worker_id: "w1".into(),
            concurrency: 2,
            started_at: Utc::now(),
        };
        let online: serde_json::Value = serde_json::from_slice(&presence.online(3, 1)).unwrap();
        assert_eq!(online["state"], "online");
        assert_eq!(online["queued"], 3);
        assert_eq!(online["running"], 1);
        assert_eq!(online["worker_id"], "w1");
        let offline: serde_json::Value = serde_json::from_slice(&presence.offline()).unwrap();
        assert_eq!(offline["state"], "offline");
        let will = presence.last_will();
        assert!(will.retain);
    }
}
