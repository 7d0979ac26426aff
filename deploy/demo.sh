#!/usr/bin/env bash
# Run the tally demo on this machine: prepares Postgres and nats-server
# (deploy/setup.sh), starts a local NATS with JetStream (deploy/nats.conf)
# unless one already listens on 4222, then runs `tally demo`: the OpenRouter
# simulator, every service, a stream of generations and a live summary.
# Extra arguments go to `tally demo` (see `tally demo --help`), e.g.
#   bash deploy/demo.sh --generations 1000 --rate 100 --keep-running
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash deploy/setup.sh --start-nats

export TALLY_NATS_URL="${TALLY_NATS_URL:-nats://127.0.0.1:4222}"
export TALLY_DATABASE_URL="${TALLY_DATABASE_URL:-postgres://tally:tally@127.0.0.1:5432/tally}"

echo "demo: cargo run -p tally -- demo $*"
echo "demo: (the local NATS keeps running afterwards; stop it with: kill \$(cat deploy/.local/nats.pid))"
exec cargo run -q -p tally -- demo "$@"
