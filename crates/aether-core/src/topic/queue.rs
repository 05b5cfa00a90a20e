//! [`WorkQueue`]: the performs of one (union, job, task, context) for one workgroup.

use std::fmt;

use super::{Topic, TopicFilter, validate_segment};
use crate::action::Action;
use crate::error::{Level, TopicError};

/// A work queue: the performs of one (union, job, task, context), shared by the workers of
/// one workgroup. Each perform is handled by exactly one worker of each workgroup.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WorkQueue {
    union: Box<str>,
    job: Box<str>,
    task: Box<str>,
    context: Box<str>,
    workgroup: Box<str>,
}

impl WorkQueue {
    /// Builds a work queue, validating every part like a topic segment.
    pub fn new(
        union: &str,
        job: &str,
        task: &str,
        context: &str,
        workgroup: &str,
    ) -> Result<WorkQueue, TopicError> {
        validate_segment(Level::Union, union)?;
        validate_segment(Level::Job, job)?;
        validate_segment(Level::Task, task)?;
        validate_segment(Level::Context, context)?;
        validate_segment(Level::Workgroup, workgroup)?;
        Ok(WorkQueue {
            union: union.into(),
            job: job.into(),
            task: task.into(),
            context: context.into(),
            workgroup: workgroup.into(),
        })
    }

    /// The queue of `topic`'s (union, job, task, context) for `workgroup`.
    pub fn of_topic(topic: &Topic, workgroup: &str) -> Result<WorkQueue, TopicError> {
        WorkQueue::new(
            topic.union(),
            topic.job(),
            topic.task(),
            topic.context(),
            workgroup,
        )
    }

    /// The union.
    pub fn union(&self) -> &str {
        &self.union
    }
    /// The job.
    pub fn job(&self) -> &str {
        &self.job
    }
    /// The task.
    pub fn task(&self) -> &str {
        &self.task
    }
    /// The context.
    pub fn context(&self) -> &str {
        &self.context
    }
    /// The workgroup.
    pub fn workgroup(&self) -> &str {
        &self.workgroup
    }

    /// The topic of a perform with `tid` on this queue.
    pub fn topic(&self, tid: &str, action: Action) -> Result<Topic, TopicError> {
        Topic::new(
            &self.union,
            &self.job,
            &self.task,
            &self.context,
            tid,
            action,
        )
    }

    /// Whether `topic` is a perform of this queue's (union, job, task, context).
    pub fn matches(&self, topic: &Topic) -> bool {
        topic.action() == Action::Perform
            && topic.union() == &*self.union
            && topic.job() == &*self.job
            && topic.task() == &*self.task
            && topic.context() == &*self.context
    }

    /// The filter `{union}/{job}/{task}/{context}/+/{action}`: every task's `action` messages.
    pub fn filter(&self, action: Action) -> TopicFilter {
        TopicFilter::from_levels(&[
            &*self.union,
            &*self.job,
            &*self.task,
            &*self.context,
            "+",
            action.as_str(),
        ])
        .expect("levels were validated")
    }

    /// `{union}/{job}/{task}/{context}`, joined by `separator`: the part shared by every
    /// task of the queue (a Redis stream key, say).
    pub fn key(&self, separator: char) -> String {
        let mut s = String::with_capacity(64);
        for (i, part) in [&self.union, &self.job, &self.task, &self.context]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                s.push(separator);
            }
            s.push_str(part);
        }
        s
    }
}

impl fmt::Display for WorkQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{} [{}]",
            self.union, self.job, self.task, self.context, self.workgroup
        )
    }
}

impl fmt::Debug for WorkQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkQueue({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::DEFAULT_WORKGROUP;

    #[test]
    fn work_queue_renderings() {
        let q = WorkQueue::new("u3", "interop", "echo", "x", DEFAULT_WORKGROUP).unwrap();
        assert_eq!(q.key(':'), "u3:interop:echo:x");
        assert_eq!(
            q.filter(Action::Cancel).as_str(),
            "u3/interop/echo/x/+/cancel"
        );
        let p = q.topic("72605384", Action::Perform).unwrap();
        assert!(q.matches(&p));
        assert!(!q.matches(&p.with_action(Action::Status)));
        assert!(matches!(
            WorkQueue::new("u", "j", "t", "x", "a b"),
            Err(TopicError::ForbiddenChar {
                level: Level::Workgroup,
                ..
            })
        ));
    }
}
