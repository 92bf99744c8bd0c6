#!/usr/bin/env bash
# Every benchmark in one command: starts any stopped service (as .ci/run does), builds the release harness once,
# runs each scenario with run counts chosen so that the whole takes under 15 minutes on the 2-vCPU development
# machine, and prints the markdown tables (progress goes to stderr). Kafka (tansu) is skipped, with a message,
# when tansu is not installed; `bash .ci/run` installs it.
#
#   bash scripts/bench.sh            # everything, ~12.5 min, plus the build (~13 min the first time)
#   QUICK=1 bash scripts/bench.sh    # a smoke run: 1 run each, 5-s loads, ~3.5 min (numbers not for publication)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

# Whether something listens on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts a service with the given command unless its port already answers, then waits for the port.
ensure_service() {
  local name=$1 port=$2
  shift 2
  if listening "$port"; then
    return 0
  fi
  log "starting $name"
  "$@" >&2 || true
  for _ in $(seq 1 60); do
    listening "$port" && return 0
    sleep 1
  done
  echo "error: $name did not come up on port $port" >&2
  return 1
}

export PATH="$HOME/.cargo/bin:$PATH"
ensure_service postgresql 5432 pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
ensure_service mariadb 3306 start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
ensure_service redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
  --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
ensure_service rabbitmq 5672 bash -c 'rabbitmqctl -q start_app 2>/dev/null || rabbitmq-server -detached'
ensure_service nats 4222 start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
  -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
if command -v tansu >/dev/null 2>&1; then
  ensure_service tansu 9092 bash -c 'nohup tansu broker --storage-engine memory://tansu/ \
    --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 >/tmp/tansu.log 2>&1 &'
elif ! listening 9092; then
  log "tansu is not installed and nothing listens on 9092: skipping the Kafka drain (bash .ci/run installs tansu)"
  export BENCH_SKIP_KAFKA=1
fi

log "building the release harness"
cargo build --release --quiet -p outbox-bench
bench=target/release/outbox-bench

# scenario, runs, and the BENCH_SECONDS of its timed loads (empty: the scenario's default). Estimated minutes
# on the development machine in the comments; see BENCHMARKS.md.
if [ -n "${QUICK:-}" ]; then
  plan=(write:1: drain:1: baseline:1: brokers:1: latency:1:5 sustained:1:5 stability:1:5 sqlite:1: mariadb:1:)
else
  plan=(
    write:3:        # 0.3
    drain:2:        # 2.5: 8 shapes x 2 runs
    baseline:3:     # 0.5-1
    brokers:1:      # 0.7
    latency:3:10    # 3.5: 6 loads x 3 runs x (10 s + set-up)
    sustained:1:60  # 3.1: 3 rates x (60 s + set-up)
    stability:1:60  # 2.1: with and without the idle transaction, 60 s each
    sqlite:2:       # 0.5
    mariadb:2:      # 1
  )
  # The issue's target is 20k; 5k is kept up with by far, so the ladder starts at 10k to fit 60-s runs.
  export BENCH_RATES=${BENCH_RATES:-10000,15000,20000}
fi
started=$SECONDS
for step in "${plan[@]}"; do
  IFS=: read -r scenario runs seconds <<<"$step"
  log "$scenario ($runs run(s)${seconds:+, ${seconds} s loads})"
  env ${seconds:+BENCH_SECONDS=$seconds} "$bench" "$scenario" "$runs"
done
log "all done in $(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s"
