//! Where a command points: the broker URL (argument, else `AETHER_URL`), the task address
//! `JOB/TASK[/CONTEXT]`, and connecting a node to it.

use std::time::Duration;

use aether::{Aether, Codec, DEFAULT_CONTEXT, SharedTransport};

use crate::exit::{Failure, Outcome};

/// The broker URL and the remaining positional arguments. A first argument without `://`
/// is not a URL: the URL then comes from `AETHER_URL`.
pub(crate) fn split_url(mut positionals: Vec<String>) -> Result<(String, Vec<String>), Failure> {
    if positionals.first().is_some_and(|a| a.contains("://")) {
        let url = positionals.remove(0);
        return Ok((url, positionals));
    }
    match std::env::var("AETHER_URL") {
        Ok(url) if !url.is_empty() => Ok((url, positionals)),
        _ => Err(Failure::usage(
            "no broker URL: give one (e.g. redis://127.0.0.1:6379) or set AETHER_URL",
        )),
    }
}

/// A task address: `JOB/TASK[/CONTEXT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Address {
    pub(crate) job: String,
    pub(crate) task: String,
    pub(crate) context: String,
}

impl Address {
    pub(crate) fn parse(s: &str) -> Result<Address, Failure> {
        let parts: Vec<&str> = s.split('/').collect();
        let (job, task, context) = match parts[..] {
            [job, task] => (job, task, DEFAULT_CONTEXT),
            [job, task, context] => (job, task, context),
            _ => {
                return Err(Failure::usage(format!(
                    "{s:?} is not a task address: expected JOB/TASK or JOB/TASK/CONTEXT"
                )));
            }
        };
        for (level, seg) in [
            (aether::Level::Job, job),
            (aether::Level::Task, task),
            (aether::Level::Context, context),
        ] {
            aether::topic::validate_segment(level, seg)
                .map_err(|e| Failure::usage(e.to_string()))?;
        }
        Ok(Address {
            job: job.to_owned(),
            task: task.to_owned(),
            context: context.to_owned(),
        })
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.job, self.task, self.context)
    }
}

/// Connects to `url`; a failure is "unreachable" and names the URL without its password.
pub(crate) async fn connect(url: &str) -> Result<SharedTransport, Failure> {
    aether::connect(url).await.map_err(|e| {
        let code = match e {
            aether::Error::Config(_)
            | aether::Error::FeatureDisabled { .. }
            | aether::Error::Topic(_) => Outcome::Usage,
            _ => Outcome::Unreachable,
        };
        Failure::new(
            code,
            format!("cannot connect to {}: {e}", aether::url::redact(url)),
        )
    })
}

/// The settings a node of the command line is built with.
#[derive(Clone, Debug)]
pub(crate) struct NodeOptions {
    pub(crate) union: String,
    pub(crate) codec: Codec,
    pub(crate) lease: Duration,
    /// Workers are asked to accept at once, so `aether watch` sees every task start.
    pub(crate) accept_at_once: bool,
}

/// A node on `transport` with `options`.
pub(crate) fn node(transport: SharedTransport, options: &NodeOptions) -> Result<Aether, Failure> {
    let mut builder = Aether::builder()
        .union(options.union.clone())
        .codec(options.codec)
        .lease(options.lease)
        .transport(transport);
    if options.accept_at_once {
        builder = builder.defer_accept(Duration::ZERO);
    }
    builder.build().map_err(|e| Failure::usage(e.to_string()))
}

/// Refuses `memory://` for commands that work with other processes: the in-memory
/// transport lives inside one process, so a perform would wait forever for a worker and a
/// watcher would see nothing.
pub(crate) fn refuse_memory(url: &str, command: &str) -> Result<(), Failure> {
    if url.to_ascii_lowercase().starts_with("memory:") {
        return Err(Failure::usage(format!(
            "`aether {command}` works with other processes, and the in-memory transport lives \
             inside one process; use a broker URL (`aether bench memory://` works)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a = Address::parse("orders/price").unwrap();
        assert_eq!(a.to_string(), "orders/price/x");
        assert_eq!(Address::parse("a/b/c").unwrap().context, "c");
        assert!(Address::parse("orders").is_err());
        assert!(Address::parse("a/b/c/d").is_err());
        assert!(Address::parse("a/+/c").is_err());
        assert!(Address::parse("a//c").is_err());
    }

    #[test]
    fn a_url_is_recognised_by_its_scheme() {
        let (url, rest) = split_url(vec!["redis://h".into(), "a/b".into()]).unwrap();
        assert_eq!((url.as_str(), rest.len()), ("redis://h", 1));
    }
}
