//! The conformance suite on Redis, streams mode, against the server at
//! `AETHER_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). The restart case runs a
//! private `redis-server` on a spare port.

use integration_tests::brokers::redis::RedisHarness;

integration_tests::conformance! {
    harness: RedisHarness::from_env("streams");
}

/// A perform whose tid is not UTF-8 is refused and dead-lettered saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tid_not_utf8_is_refused_saying_so() {
    integration_tests::redis_input::tid_not_utf8_is_refused_saying_so("streams").await;
}

/// A message on a channel whose name is not UTF-8 reaches the subscription as invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_not_utf8_reaches_the_subscription_as_invalid() {
    integration_tests::redis_input::channel_not_utf8_reaches_the_subscription_as_invalid().await;
}
