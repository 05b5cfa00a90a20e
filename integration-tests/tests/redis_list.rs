//! The conformance suite on Redis, list mode, against the server at
//! `AETHER_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). The restart case runs a
//! private `redis-server` on a spare port.

use integration_tests::brokers::redis::RedisHarness;

integration_tests::conformance! {
    harness: RedisHarness::from_env("list");
}

/// A perform whose tid is not UTF-8 is refused and dead-lettered saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tid_not_utf8_is_refused_saying_so() {
    integration_tests::redis_input::tid_not_utf8_is_refused_saying_so("list").await;
}

/// An element whose tid holds `:` is refused, not misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tid_holding_a_colon_is_refused() {
    integration_tests::redis_input::list_tid_holding_a_colon_is_refused().await;
}
