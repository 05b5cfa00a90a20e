//! The soak command's options, parsed from its arguments.

use std::time::Duration;

use anyhow::{Context, bail};

/// Usage text for `--help`.
pub const USAGE: &str = "\
usage: soak --transport T [options]

Runs tasks continuously on one transport while killing worker processes with SIGKILL and
restarting a private broker, then prints what happened to every task. Exits non-zero if a
task was lost, failed, or had more than one outcome.

  --transport T       memory | redis-streams | redis-lists | mqtt | amqp
  --url URL           use this broker instead of a private one (no broker restarts)
  --duration D        how long to submit tasks (default 60s; e.g. 600s, 10m)
  --in-flight N       tasks in flight at once (default 16)
  --workers N         worker processes alive at once (default 3)
  --concurrency N     tasks each worker runs at once (default 8)
  --work D            each handler run sleeps this long (default 20ms)
  --lease D           the nodes' lease (default 3s)
  --kill-every D      kill -9 one worker process this often (default 5s; 0 = never)
  --restart-every D   restart the private broker this often (default 60s; 0 = never)
  --drain D           after the duration, how long to wait for outstanding tasks (default 60s)
  --max-attempts N    the client's dispatches per task before giving up (default: aether's)
  --quiet             no progress line every 10 s

Durations take ms, s, m or h (e.g. 500ms, 30s, 10m).";

/// The transports a soak runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The in-memory broker (workers are tasks of the soak process: the broker lives there).
    Memory,
    /// Redis streams.
    RedisStreams,
    /// Redis lists.
    RedisLists,
    /// MQTT (Mosquitto).
    Mqtt,
    /// AMQP (RabbitMQ).
    Amqp,
}

impl Transport {
    /// Every transport, in the order the README lists them.
    pub const ALL: [Transport; 5] = [
        Transport::Memory,
        Transport::RedisStreams,
        Transport::RedisLists,
        Transport::Mqtt,
        Transport::Amqp,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Memory => "memory",
            Transport::RedisStreams => "redis-streams",
            Transport::RedisLists => "redis-lists",
            Transport::Mqtt => "mqtt",
            Transport::Amqp => "amqp",
        }
    }
}

impl std::str::FromStr for Transport {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Transport> {
        Transport::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .with_context(|| {
                let names: Vec<&str> = Transport::ALL.iter().map(|t| t.name()).collect();
                format!("unknown transport {s:?}; one of {}", names.join(", "))
            })
    }
}

/// What one soak does.
#[derive(Clone, Debug)]
pub struct Options {
    /// The transport.
    pub transport: Transport,
    /// A broker to use instead of a private one.
    pub url: Option<String>,
    /// How long tasks are submitted.
    pub duration: Duration,
    /// Tasks in flight at once.
    pub in_flight: usize,
    /// Worker processes alive at once.
    pub workers: usize,
    /// Tasks each worker runs at once.
    pub concurrency: usize,
    /// How long each handler run takes.
    pub work: Duration,
    /// The nodes' lease.
    pub lease: Duration,
    /// Interval between worker kills (zero: none).
    pub kill_every: Duration,
    /// Interval between broker restarts (zero: none).
    pub restart_every: Duration,
    /// How long outstanding tasks may take after the duration.
    pub drain: Duration,
    /// The client's dispatches per task, if not aether's default.
    pub max_attempts: Option<u32>,
    /// No progress lines.
    pub quiet: bool,
}

impl Options {
    /// The defaults for `transport`.
    pub fn new(transport: Transport) -> Options {
        Options {
            transport,
            url: None,
            duration: Duration::from_secs(60),
            in_flight: 16,
            workers: 3,
            concurrency: 8,
            work: Duration::from_millis(20),
            lease: Duration::from_secs(3),
            kill_every: Duration::from_secs(5),
            restart_every: Duration::from_secs(60),
            drain: Duration::from_secs(60),
            max_attempts: None,
            quiet: false,
        }
    }

    /// Parses the command line (without the program name). `Ok(None)`: `--help` was asked.
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Option<Options>> {
        let mut transport = None;
        let mut o = Options::new(Transport::Memory);
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().with_context(|| format!("{a} needs a value"));
            match a.as_str() {
                "-h" | "--help" => return Ok(None),
                "--transport" => transport = Some(value()?.parse()?),
                "--url" => o.url = Some(value()?),
                "--duration" => o.duration = duration(&value()?)?,
                "--in-flight" => o.in_flight = number(&value()?)?,
                "--workers" => o.workers = number(&value()?)?,
                "--concurrency" => o.concurrency = number(&value()?)?,
                "--work" => o.work = duration(&value()?)?,
                "--lease" => o.lease = duration(&value()?)?,
                "--kill-every" => o.kill_every = duration(&value()?)?,
                "--restart-every" => o.restart_every = duration(&value()?)?,
                "--drain" => o.drain = duration(&value()?)?,
                "--max-attempts" => o.max_attempts = Some(number(&value()?)?),
                "--quiet" => o.quiet = true,
                other => bail!("unknown argument {other:?} (see --help)"),
            }
        }
        o.transport = transport.context("--transport is required (see --help)")?;
        if o.in_flight == 0 || o.workers == 0 || o.concurrency == 0 {
            bail!("--in-flight, --workers and --concurrency must be at least 1");
        }
        Ok(Some(o))
    }
}

fn number<T: std::str::FromStr>(s: &str) -> anyhow::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    s.parse().with_context(|| format!("{s:?} is not a number"))
}

/// `500ms`, `30s`, `10m`, `1h`, or `0`.
pub fn duration(s: &str) -> anyhow::Result<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .with_context(|| format!("{s:?} is not a duration (e.g. 30s)"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "" if n == 0 => Duration::ZERO,
        _ => bail!("{s:?} is not a duration: use ms, s, m or h (e.g. 30s)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Option<Options>> {
        Options::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn durations() {
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("600s").unwrap(), Duration::from_secs(600));
        assert_eq!(duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(duration("0").unwrap(), Duration::ZERO);
        assert!(duration("10").is_err());
        assert!(duration("s").is_err());
        assert!(duration("5x").is_err());
    }

    #[test]
    fn arguments() {
        let o = parse(&["--transport", "redis-streams", "--duration", "600s"])
            .unwrap()
            .unwrap();
        assert_eq!(o.transport, Transport::RedisStreams);
        assert_eq!(o.duration, Duration::from_secs(600));
        assert_eq!(o.in_flight, 16);
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--duration", "1s"]).is_err(), "transport required");
        assert!(parse(&["--transport", "kafka"]).is_err());
        assert!(parse(&["--transport", "mqtt", "--bogus"]).is_err());
        assert!(parse(&["--transport", "mqtt", "--in-flight"]).is_err());
    }
}
