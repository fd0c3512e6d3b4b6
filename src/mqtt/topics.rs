//! Topic names of PROTOCOL.md, in one place.

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
    fn plain_filter_and_suffixed_status() {
        let topics = Topics::new("p", "g", "w1", false, true);
        assert_eq!(topics.tasks_filter(), "p/g/tasks");
        assert_eq!(topics.status("t1"), "p/g/tasks/t1/status/w1");
    }
}
