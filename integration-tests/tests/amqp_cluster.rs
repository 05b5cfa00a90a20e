//! The conformance and contract suites on a 3-node RabbitMQ cluster with quorum queues
//! (on spare loopback ports, started once for this binary; see `brokers::amqp_cluster`).
//! Every connection names the three nodes. The restart cases restart a private single
//! node with the same settings.

use integration_tests::brokers::amqp_cluster::AmqpClusterHarness;

integration_tests::conformance! {
    harness: AmqpClusterHarness::shared();
}
