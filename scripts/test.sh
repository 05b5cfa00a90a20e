#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine or a developer's one:
#   1. build tools (cmake, g++, make, pkg-config, libssl-dev, libzmq3-dev) from Debian packages
#      if missing;
#   2. brokers (Redis 6379, Mosquitto 1883, RabbitMQ 5672): used if already reachable, else
#      started with `docker compose` where a Docker engine runs, else installed from Debian
#      packages and started;
#   3. a Python venv with Python AetherMagic for the MQTT and WebSocket interop tests
#      (target/pyenv);
#   4. cargo test --workspace --all-features.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test memory`).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else echo "need root for: $*" >&2; return 1; fi; }
apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
reachable() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() { # port name seconds
  for _ in $(seq 1 "$3"); do reachable "$1" && return 0; sleep 1; done
  echo "$2 did not come up on 127.0.0.1:$1 within $3 s" >&2; return 1
}

log "build tools"
missing=()
for tool in cmake g++ make pkg-config; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
# aether-zmq links the system's libzmq (with libsodium, for CURVE); see .cargo/config.toml.
[ -f /usr/include/zmq.h ] || missing+=(libzmq3-dev)
[ ${#missing[@]} -eq 0 ] || { log "installing ${missing[*]}"; apt_install "${missing[@]}"; }

log "brokers"
declare -A PORT=([redis]=6379 [mosquitto]=1883 [rabbitmq]=5672)
down=()
for b in redis mosquitto rabbitmq; do reachable "${PORT[$b]}" || down+=("$b"); done
if [ ${#down[@]} -gt 0 ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    log "starting ${down[*]} with docker compose"
    docker compose up -d --wait "${down[@]}"
  else
    log "no Docker engine; starting ${down[*]} from Debian packages"
    for b in "${down[@]}"; do
      case $b in
        redis)
          command -v redis-server >/dev/null || apt_install redis-server
          redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no ;;
        mosquitto)
          command -v mosquitto >/dev/null || apt_install mosquitto
          as_root mkdir -p /run/mosquitto
          as_root chown mosquitto: /run/mosquitto 2>/dev/null || true
          as_root mosquitto -d -c /etc/mosquitto/mosquitto.conf ;;
        rabbitmq)
          command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
          as_root rabbitmq-server -detached ;;
      esac
    done
  fi
fi
wait_for 6379 Redis 30
wait_for 1883 Mosquitto 30
wait_for 5672 RabbitMQ 120
if command -v rabbitmqctl >/dev/null && ! (command -v docker >/dev/null && docker compose ps -q rabbitmq 2>/dev/null | grep -q .); then
  as_root rabbitmqctl -q await_startup >/dev/null 2>&1 || true
fi
# Restart, long-task and TLS tests start private brokers on spare ports from these, even
# when the shared brokers run in Docker: redis-server, mosquitto, rabbitmq-server (with its
# rabbitmqctl and epmd), and the openssl CLI for test certificates; tmux for the command
# line's terminal test.
missing=()
for bin in redis-server mosquitto openssl tmux; do command -v "$bin" >/dev/null || missing+=("$bin"); done
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
[ ${#missing[@]} -eq 0 ] || { log "installing ${missing[*]} for private-broker tests"; apt_install "${missing[@]}"; }

log "Python AetherMagic for interop tests"
PYENV=target/pyenv
if ! "$PYENV/bin/python" -c 'import aethermagic, aiomqtt, aiohttp, websockets; assert int(websockets.__version__.split(".")[0]) < 14' 2>/dev/null; then
  python3 -m venv "$PYENV" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$PYENV"; }
  "$PYENV/bin/pip" install -q --disable-pip-version-check -r scripts/python-requirements.txt
fi
export AETHER_TEST_PYTHON="$PWD/$PYENV/bin/python"

log "cargo test --workspace --all-features $*"
cargo test --workspace --all-features "$@"
