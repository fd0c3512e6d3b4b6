//! Topic names of PROTOCOL.md, in one place.

use crate::config::WorkerConfig;

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
        let topic = format!("{}/{task_id}/status", self.tasks());
        if self.suffix_status_with_worker_id {
            format!("{topic}/{}", self.worker_id)
        } else {
            topic
        }
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
    fn plain_filter_and_suffixed_status() {
        let topics = Topics::new("p", "g", "w1", false, true);
        assert_eq!(topics.tasks_filter(), "p/g/tasks");
        assert_eq!(topics.status("t1"), "p/g/tasks/t1/status/w1");
    }
}
