//! The conformance suite on a Redis Cluster (3 masters, 3 replicas on spare loopback ports,
//! started once for this binary), list mode. The restart cases restart a private
//! cluster of 3 masters whole.

use integration_tests::brokers::redis_cluster::RedisClusterHarness;

integration_tests::conformance! {
    harness: RedisClusterHarness::shared("list");
    ignore: {
        completion_lost_while_disconnected_is_recovered:
            "a cluster client finds every node by itself: a proxy of the seed cannot cut it off",
    }
}
