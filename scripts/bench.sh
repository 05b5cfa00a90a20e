#!/usr/bin/env bash
# The README's performance table in one command: aether on every transport beside its raw
# client loop, and Celery on Redis beside Redis, in ROUNDS interleaved rounds (medians).
#
#   scripts/bench.sh                 # ROUNDS=5 TASKS=5000
#   ROUNDS=3 TASKS=2000 scripts/bench.sh
#
# Uses Redis (6379) and RabbitMQ (5672, guest/guest) on 127.0.0.1, as the tests do. Starts
# its own Mosquitto with `set_tcp_nodelay true` on MQTT_PORT (18830), the ZeroMQ device and
# the WebSocket hub inside the bench process (ZeroMQ twice: a device on its own thread, and
# brokerless, the client hosting the device and the worker connecting over TCP; beside
# raw tmq and the libzmq floor on plain threads), and, when CELERY_SCRIPT names Celery's
# benchmark script (default ../shared/peers/celery_bench.py), a Celery worker in a venv
# under target/. Everything it starts is stopped by PID when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
TASKS=${TASKS:-5000}
MQTT_PORT=${MQTT_PORT:-18830}
REDIS=${REDIS:-redis://127.0.0.1:6379}
AMQP=${AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}
# Not CELERY_BENCH: Celery's worker reads that name and turns on its own bench mode.
CELERY_SCRIPT=${CELERY_SCRIPT:-../shared/peers/celery_bench.py}

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    [[ -f $work/celery.log ]] && tail -5 "$work/celery.log" >&2
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -p aether-bench
bench=${CARGO_TARGET_DIR:-target}/release/aether-bench

cat > "$work/mosquitto.conf" <<CONF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
persistence false
CONF
mosquitto -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null && break; sleep 0.1; done

peer=()
if [[ -f $CELERY_SCRIPT ]]; then
    venv=target/peers-venv
    [[ -x $venv/bin/celery ]] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q celery redis packaging; }
    script=$(realpath "$CELERY_SCRIPT")
    venv=$(realpath "$venv")
    (cd "$(dirname "$script")" && exec "$venv/bin/celery" -A "$(basename "$script" .py)" worker \
        --pool=threads --concurrency=8 -l warning) > "$work/celery.log" 2>&1 &
    pids+=($!)
    # A fresh worker can take a while to start: wait until one task goes through.
    for attempt in 1 2 3 4; do
        "$venv/bin/python" "$script" 1 1 > /dev/null 2>&1 && break
        [[ $attempt == 4 ]] && { echo "the Celery worker did not answer; see its log:" >&2; exit 1; }
    done
    peer=(--peer "$REDIS" "$venv/bin/python $script")
else
    echo "note: $CELERY_SCRIPT not found; Celery does not run beside Redis" >&2
fi

"$bench" --rounds "$ROUNDS" --tasks "$TASKS" --inflight 1,64 \
    --raw redis --raw mqtt --raw amqp --raw zmq --raw libzmq --raw ws \
    memory://bench "$REDIS" "$REDIS?mode=list" "mqtt://127.0.0.1:$MQTT_PORT" "$AMQP" \
    zmq://127.0.0.1:5591 "zmq://127.0.0.1:5592?bind=true" ws://127.0.0.1:18095/ws "${peer[@]}"
