//! The conformance suite on Redis, streams mode, against the server at
//! `AETHER_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). The restart case runs a
//! private `redis-server` on a spare port.

use integration_tests::brokers::redis::RedisHarness;

integration_tests::conformance! {
    harness: RedisHarness::from_env("streams");
}
