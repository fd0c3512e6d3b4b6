//! The transport `run` starts, as `transport` chooses: the MQTT side or the
//! HTTP polling side, and the little `run` needs from either (a task
//! source, a status sink, where run events go, an orderly end). Everything
//! else in `run`, and table, pool, journal and dashboard, never knows which
//! one is in use.

use std::sync::Arc;
use std::time::Duration;

use crate::StartError;
use crate::broker::local::StatusLink;
use crate::config::{Config, Transport};
use crate::intake::IntakePolicy;
use crate::model::{EventSink, NoEvents};
use crate::mqtt::MqttSide;
use crate::poll::{self, PollSide};
use crate::table::TaskTable;
use crate::transport::{StatusSink, TaskSource};

/// One started transport.
pub enum Side {
    /// MQTT: the broker connection, statuses, events and presence (boxed:
    /// it is the larger; one exists per process).
    Mqtt(Box<MqttSide>),
    /// HTTP polling: the poll loop and the status poster.
    Poll(PollSide),
}

impl Side {
    /// Starts the transport `config` chooses; requests `policy` accepts go
    /// into `table`.
    pub fn start(
        config: &Config,
        table: &TaskTable,
        policy: IntakePolicy,
        status_link: Option<StatusLink>,
    ) -> Result<Side, StartError> {
        Ok(match config.transport {
            Transport::Mqtt => Side::Mqtt(Box::new(MqttSide::start(
                config,
                table,
                policy,
                status_link,
            )?)),
            Transport::Http => Side::Poll(PollSide::start(config, table, policy)?),
        })
    }

    /// Where requests come from, and where the worker's own API sends
    /// submits and cancels.
    pub fn source(&self) -> Arc<dyn TaskSource> {
        match self {
            Side::Mqtt(mqtt) => mqtt.source(),
            Side::Poll(poll) => poll.source(),
        }
    }

    /// Where statuses go; once.
    pub fn sink(&mut self) -> Option<Box<dyn StatusSink>> {
        match self {
            Side::Mqtt(mqtt) => mqtt.sink(),
            Side::Poll(poll) => poll.sink(),
        }
    }

    /// What the status sink delivers first: over MQTT every status held (the
    /// embedded broker forgot its retained ones); when polling, those the
    /// controller has not taken yet.
    pub fn restored(&self, table: &TaskTable) -> Vec<crate::model::TaskStatus> {
        match self {
            Side::Mqtt(_) => table.statuses(),
            Side::Poll(_) => table.undelivered_statuses(),
        }
    }

    /// Where runs send their events: the MQTT events topic; nowhere when
    /// polling.
    pub fn event_sink(&self) -> Arc<dyn EventSink> {
        match self {
            Side::Mqtt(mqtt) => mqtt.event_sink(),
            Side::Poll(_) => Arc::new(NoEvents),
        }
    }

    /// Where tasks come from, for the start-up log line: the tasks filter,
    /// or the polled URL.
    pub fn tasks_from(&self) -> String {
        match self {
            Side::Mqtt(mqtt) => mqtt.topics().tasks_filter(),
            Side::Poll(poll) => format!("{}/tasks", poll.shown_url()),
        }
    }

    /// Ends the transport once the status sink delivered what it had, each
    /// step within `margin`.
    pub async fn finish(self, margin: Duration) {
        match self {
            Side::Mqtt(mqtt) => mqtt.finish(margin).await,
            Side::Poll(poll) => poll.finish(margin).await,
        }
    }
}

/// Where tasks come from, as `/api/worker` shows it (its `broker`): the
/// address MQTT clients use (not the worker's private way into an embedded
/// broker), or the polled controller's URL without credentials.
pub fn shown_source(config: &Config) -> String {
    match (&config.transport, &config.poll) {
        (Transport::Http, Some(poll)) => poll::retry::shown_url(&poll.base_url),
        _ => {
            let (host, port) = config.mqtt.effective_host(&config.broker);
            format!("{host}:{port}")
        }
    }
}
