#!/usr/bin/env bash
# The one test command: prepares Postgres and nats-server (deploy/setup.sh),
# then runs every test of the workspace against them (all targets, then the
# doctests, which `--all-targets` leaves out). With arguments, runs just
# `cargo test <arguments>` instead (e.g. `bash deploy/test.sh -p tally-bus`).
#
# Tests start their own NATS servers and create their own databases; they
# find them through:
#   TALLY_TEST_DATABASE_URL  admin connection used to create per-test databases
#                            (default postgres://tally:tally@127.0.0.1:5432/postgres)
#   TALLY_NATS_SERVER_BIN    the nats-server binary (default: the one setup.sh installs)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash deploy/setup.sh

export TALLY_TEST_DATABASE_URL="${TALLY_TEST_DATABASE_URL:-postgres://tally:tally@127.0.0.1:5432/postgres}"
export TALLY_NATS_SERVER_BIN="${TALLY_NATS_SERVER_BIN:-$ROOT/deploy/.local/venv/bin/nats-server}"

if [ "$#" -gt 0 ]; then
  echo "test: cargo test $*"
  exec cargo test "$@"
fi
echo "test: cargo test --workspace --all-targets --no-fail-fast"
cargo test --workspace --all-targets --no-fail-fast
echo "test: cargo test --workspace --doc"
cargo test --workspace --doc
