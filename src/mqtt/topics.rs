//! Topic names of PROTOCOL.md, in one place, and which topics a requester
//! may name as its MQTT 5 Response Topic.

use crate::config::WorkerConfig;

/// Longest Response Topic honoured (bytes).
const MAX_RESPONSE_TOPIC: usize = 1024;

/// Why a request's Response Topic is not used (PROTOCOL.md: the task still
/// runs, without replies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnusableResponseTopic {
    /// An empty topic.
    #[error("it is empty")]
    Empty,
    /// Longer than 1024 bytes (`MAX_RESPONSE_TOPIC`).
    #[error("it is longer than {MAX_RESPONSE_TOPIC} bytes")]
    TooLong,
    /// A filter (`+`, `#`), not a topic name.
    #[error("it contains a wildcard")]
    Wildcard,
    /// A broker's own topic (`$SYS/...`, `$share/...`).
    #[error("it starts with $")]
    Broker,
    /// A control character (NUL included).
    #[error("it contains a control character")]
    ControlCharacter,
    /// Under `P/G/`: statuses sent there would reach the worker itself as
    /// requests or cancels.
    #[error("it lies under the worker's own topics")]
    OwnTopic,
}

/// Topic builder for one worker of one group.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
    group: String,
    worker_id: String,
    shared: bool,
    suffix_status_with_worker_id: bool,
}

impl Topics {
    /// Topics for `worker_id` in `group` under `prefix`.
    pub fn new(
        prefix: &str,
        group: &str,
        worker_id: &str,
        shared: bool,
        suffix_status_with_worker_id: bool,
    ) -> Self {
        Topics {
            prefix: prefix.to_owned(),
            group: group.to_owned(),
            worker_id: worker_id.to_owned(),
            shared,
            suffix_status_with_worker_id,
        }
    }

    /// The topics of the worker `worker` configures.
    pub fn of(worker: &WorkerConfig) -> Self {
        Topics::new(
            &worker.topic_prefix,
            &worker.group_name,
            &worker.worker_id,
            worker.shared_subscription,
            worker.suffix_status_with_worker_id,
        )
    }

    /// Checks a request's Response Topic: a plain topic name outside the
    /// broker's `$` topics and outside this group's `P/G/`, where a status
    /// would come back to the worker as a request (a feedback loop) or a
    /// cancel (of another task).
    pub fn check_response_topic(&self, topic: &str) -> Result<(), UnusableResponseTopic> {
        let own = format!("{}/{}/", self.prefix, self.group);
        if topic.is_empty() {
            Err(UnusableResponseTopic::Empty)
        } else if topic.len() > MAX_RESPONSE_TOPIC {
            Err(UnusableResponseTopic::TooLong)
        } else if topic.contains(['+', '#']) {
            Err(UnusableResponseTopic::Wildcard)
        } else if topic.starts_with('$') {
            Err(UnusableResponseTopic::Broker)
        } else if topic.chars().any(char::is_control) {
            Err(UnusableResponseTopic::ControlCharacter)
        } else if topic.starts_with(&own) {
            Err(UnusableResponseTopic::OwnTopic)
        } else {
            Ok(())
        }
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Whether the tasks filter is a shared subscription (`$share/...`).
    pub fn shares_tasks(&self) -> bool {
        self.shared
    }

    /// `P/G/tasks`: where controllers publish requests.
    pub fn tasks(&self) -> String {
        format!("{}/{}/tasks", self.prefix, self.group)
    }

    /// The filter the worker subscribes to: the shared-subscription form
    /// `$share/ansible-worker-G/P/G/tasks`, or plain `P/G/tasks`.
    pub fn tasks_filter(&self) -> String {
        if self.shared {
            format!("$share/ansible-worker-{}/{}", self.group, self.tasks())
        } else {
            self.tasks()
        }
    }

    /// `P/G/tasks/<id>/cancel`: a request to cancel one task.
    pub fn cancel(&self, task_id: &str) -> String {
        format!("{}/{task_id}/cancel", self.tasks())
    }

    /// `P/G/tasks/+/cancel`: every worker follows cancels (not shared), and
    /// only the owner of the task acts on one.
    pub fn cancel_filter(&self) -> String {
        self.cancel("+")
    }

    /// The task id of a cancel topic, if `topic` is one of this group's.
    pub fn cancelled_task<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let rest = topic.strip_prefix(&self.tasks())?.strip_prefix('/')?;
        let id = rest.strip_suffix("/cancel")?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }

    /// `P/G/workers/<worker_id>`: this worker's retained presence document.
    pub fn presence(&self) -> String {
        format!("{}/{}/workers/{}", self.prefix, self.group, self.worker_id)
    }

    /// Filter matching every status topic of one task, with or without the
    /// worker-id suffix.
    pub fn status_filter(&self, task_id: &str) -> String {
        format!("{}/{task_id}/status/#", self.tasks())
    }

    /// `P/G/tasks/<id>/status` (or `.../status/<worker_id>`).
    pub fn status(&self, task_id: &str) -> String {
        // Built piece by piece: it is made for every status published.
        let suffix = self.suffix_status_with_worker_id;
        let mut topic = String::with_capacity(
            self.prefix.len() + self.group.len() + task_id.len() + self.worker_id.len() + 16,
        );
        for part in [
            &self.prefix,
            "/",
            &self.group,
            "/tasks/",
            task_id,
            "/status",
        ] {
            topic.push_str(part);
        }
        if suffix {
            topic.push('/');
            topic.push_str(&self.worker_id);
        }
        topic
    }

    /// `P/G/tasks/<id>/events`: the live events of a task's run (never
    /// suffixed with the worker id).
    pub fn events(&self, task_id: &str) -> String {
        format!("{}/{task_id}/events", self.tasks())
    }

    /// `P/G/tasks/<id>/#`: every topic of one task (status, events, cancel),
    /// as one filter, so that a broker delivers them in the order they were
    /// published (rumqttd keeps no order across filters).
    pub fn task_filter(&self, task_id: &str) -> String {
        format!("{}/{task_id}/#", self.tasks())
    }

    /// True for a topic only the worker itself publishes to: a task's
    /// status and events (`P/G/tasks/<id>/status[/...]`,
    /// `P/G/tasks/<id>/events[/...]`) and presence (`P/G/workers[/...]`).
    pub fn worker_only(&self, topic: &str) -> bool {
        let group = format!("{}/{}/", self.prefix, self.group);
        let Some(rest) = topic.strip_prefix(&group) else {
            return false;
        };
        if rest == "workers" || rest.starts_with("workers/") {
            return true;
        }
        let Some(task) = rest.strip_prefix("tasks/") else {
            return false;
        };
        let mut levels = task.split('/');
        let _id = levels.next();
        matches!(levels.next(), Some("status" | "events"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_filter_names_the_group() {
        let topics = Topics::new("ansible", "lab", "w1", true, false);
        assert_eq!(
            topics.tasks_filter(),
            "$share/ansible-worker-lab/ansible/lab/tasks"
        );
        assert_eq!(topics.status("t1"), "ansible/lab/tasks/t1/status");
    }

    #[test]
    fn cancel_topics_round_trip_the_task_id() {
        let topics = Topics::new("ansible", "lab", "w1", true, false);
        assert_eq!(topics.cancel_filter(), "ansible/lab/tasks/+/cancel");
        let topic = topics.cancel("t-1");
        assert_eq!(topics.cancelled_task(&topic), Some("t-1"));
        assert_eq!(topics.cancelled_task("ansible/lab/tasks/t-1/status"), None);
        assert_eq!(
            topics.cancelled_task("ansible/other/tasks/t-1/cancel"),
            None
        );
        assert_eq!(topics.cancelled_task("ansible/lab/tasks/a/b/cancel"), None);
        assert_eq!(topics.presence(), "ansible/lab/workers/w1");
    }

    #[test]
    fn response_topics_outside_the_workers_own_are_usable() {
        use UnusableResponseTopic::*;
        let topics = Topics::new("ansible", "lab", "w1", true, false);
        for usable in [
            "replies/me",
            "ansible/other-group/replies",
            "ansible/lab",
            "ansible/labx/tasks",
            "x/ansible/lab/tasks",
            "réponses/ü",
        ] {
            assert_eq!(topics.check_response_topic(usable), Ok(()), "{usable}");
        }
        let long = "r/".repeat(MAX_RESPONSE_TOPIC);
        for (topic, why) in [
            ("", Empty),
            (long.as_str(), TooLong),
            ("replies/+", Wildcard),
            ("replies/#", Wildcard),
            ("#", Wildcard),
            ("$SYS/broker", Broker),
            ("$share/g/replies", Broker),
            ("replies/\0x", ControlCharacter),
            ("replies/\nx", ControlCharacter),
            ("ansible/lab/tasks", OwnTopic),
            ("ansible/lab/tasks/other-id/cancel", OwnTopic),
            ("ansible/lab/tasks/t1/status", OwnTopic),
            ("ansible/lab/workers/w1", OwnTopic),
            ("ansible/lab/", OwnTopic),
        ] {
            assert_eq!(topics.check_response_topic(topic), Err(why), "{topic:?}");
        }
    }

    #[test]
    fn statuses_events_and_presence_are_worker_only() {
        let topics = Topics::new("ansible", "lab", "w1", true, false);
        for only in [
            "ansible/lab/tasks/t1/status",
            "ansible/lab/tasks/t1/status/w2",
            "ansible/lab/tasks/t1/events",
            "ansible/lab/tasks//status",
            "ansible/lab/workers/w1",
            "ansible/lab/workers/other",
            "ansible/lab/workers",
        ] {
            assert!(topics.worker_only(only), "{only}");
        }
        for open in [
            "ansible/lab/tasks",
            "ansible/lab/tasks/t1/cancel",
            "ansible/lab/tasks/status",
            "ansible/other/tasks/t1/status",
            "ansible/lab/workersx",
            "replies/me",
        ] {
            assert!(!topics.worker_only(open), "{open}");
        }
    }

    #[test]
    fn plain_filter_and_suffixed_status() {
        let topics = Topics::new("p", "g", "w1", false, true);
        assert_eq!(topics.tasks_filter(), "p/g/tasks");
        assert_eq!(topics.status("t1"), "p/g/tasks/t1/status/w1");
        assert_eq!(topics.events("t1"), "p/g/tasks/t1/events");
        assert!(topics.worker_only(&topics.events("t1")));
        assert_eq!(topics.task_filter("t1"), "p/g/tasks/t1/#");
    }
}
