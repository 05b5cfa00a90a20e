#!/usr/bin/env bash
# aether on a 3-node RabbitMQ cluster with quorum queues beside the single shared node (with
# classic and with quorum queues), in ROUNDS interleaved rounds of the bench (medians).
#
#   scripts/bench-rabbit-cluster.sh              # ROUNDS=3 TASKS=2000
#   ROUNDS=5 TASKS=5000 scripts/bench-rabbit-cluster.sh
#
# The cluster is started on spare loopback ports by integration-tests' rabbit-cluster
# helper (see integration-tests/src/brokers/amqp_cluster.rs), which prints its start-up
# time and each node's memory, runs the bench with `{cluster}` replaced by the cluster's
# URL, and kills the nodes when it ends (they also die with it if it is killed). On the
# single node the quorum run has exchanges and queues of its own: the bench's union is
# always `bench`, and a queue cannot change type (nor should the classic run's performs
# reach the quorum run's workgroup queue through a shared exchange).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
TASKS=${TASKS:-2000}
AMQP=${AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}

cargo build --release -p aether-bench
cargo build -p integration-tests --bin rabbit-cluster
target=${CARGO_TARGET_DIR:-target}
"$target/debug/rabbit-cluster" "$target/release/aether-bench" \
    --rounds "$ROUNDS" --tasks "$TASKS" --inflight 1,64 \
    "$AMQP" "$AMQP?queue_type=quorum&dead_letter=aether.quorum-dead-letters&queue_prefix=aether-quorum&exchange=aether-quorum.{union}" '{cluster}'
