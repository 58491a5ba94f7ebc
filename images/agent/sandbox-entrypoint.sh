#!/bin/bash
# claudecluster-sandbox: entrypoint of the ClaudeCluster agent image.
#
# The container runs with `--network none`. The worker bind-mounts a
# per-session directory at /run/claudecluster holding
#   gateway.sock  Unix socket of the worker's model gateway (HTTP/1.1)
#   prompt.md     the prompt for the run
# This script starts claudecluster-relay (TCP 127.0.0.1:PORT -> gateway.sock)
# when the socket is there, waits until the relay accepts connections, then
# execs the command with stdin read from the prompt file when that exists.
#
# Environment:
#   CLAUDECLUSTER_GATEWAY_SOCKET  default /run/claudecluster/gateway.sock
#   CLAUDECLUSTER_PROMPT_FILE     default /run/claudecluster/prompt.md
#   CLAUDECLUSTER_RELAY_PORT      default 8787
#   CLAUDECLUSTER_RELAY_WAIT      whole seconds to wait for the relay, default 5
#   CLAUDECLUSTER_SETUP_FILE      default /run/claudecluster/setup.sh (run first, if present)
#   ANTHROPIC_BASE_URL            set to http://127.0.0.1:PORT when the relay
#                                 runs and it is not set already
set -euo pipefail

prog=claudecluster-sandbox
socket="${CLAUDECLUSTER_GATEWAY_SOCKET:-/run/claudecluster/gateway.sock}"
prompt="${CLAUDECLUSTER_PROMPT_FILE:-/run/claudecluster/prompt.md}"
port="${CLAUDECLUSTER_RELAY_PORT:-8787}"
wait_s="${CLAUDECLUSTER_RELAY_WAIT:-5}"
relay=/usr/local/bin/claudecluster-relay

die() { echo "$prog: $*" >&2; exit 1; }

if [ $# -eq 0 ]; then
    cat >&2 <<EOF
usage: $prog COMMAND [ARG...]
  e.g. $prog claude -p --output-format stream-json --verbose \\
         --dangerously-skip-permissions --max-turns 30

Starts the model-gateway relay on 127.0.0.1:$port when $socket exists,
then runs COMMAND with stdin from $prompt when that file exists.
EOF
    exit 2
fi

if [ -e "$socket" ]; then
    [ -S "$socket" ] || die "$socket exists but is not a Unix socket"
    case "$port" in ''|*[!0-9]*) die "CLAUDECLUSTER_RELAY_PORT='$port' is not a port number" ;; esac
    case "$wait_s" in ''|*[!0-9]*) die "CLAUDECLUSTER_RELAY_WAIT='$wait_s' is not a whole number of seconds" ;; esac
    # Relay output goes to stderr: stdout carries the CLI's stream-json.
    node "$relay" --port "$port" --socket "$socket" >&2 &
    relay_pid=$!

    # Bounded wait until the port accepts connections. The probe connection
    # never reaches the gateway (the relay connects upstream on first byte).
    deadline=$(( $(date +%s%N) / 1000000 + wait_s * 1000 ))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        kill -0 "$relay_pid" 2>/dev/null || die "relay exited before listening on 127.0.0.1:$port (see its message above)"
        [ "$(( $(date +%s%N) / 1000000 ))" -lt "$deadline" ] \
            || die "relay not accepting connections on 127.0.0.1:$port after ${wait_s}s"
        sleep 0.05
    done
    export ANTHROPIC_BASE_URL="${ANTHROPIC_BASE_URL:-http://127.0.0.1:$port}"
fi

# The repository's setup commands (.github/claude.yml `setup`) run before the command, in
# /workspace; their output goes to stderr so stdout stays the CLI's stream-json.
setup="${CLAUDECLUSTER_SETUP_FILE:-/run/claudecluster/setup.sh}"
if [ -f "$setup" ]; then
    echo "$prog: running the repository's setup commands" >&2
    status=0
    (cd /workspace && bash -e "$setup") </dev/null >&2 || status=$?
    if [ "$status" -ne 0 ]; then
        echo "$prog: setup commands failed with exit status $status" >&2
        exit 3
    fi
fi

# exec: the command replaces this script (as PID 1 unless `docker run --init`),
# so signals from `docker stop` reach it directly; the relay keeps running
# beside it and dies with the container when the command exits.
if [ -f "$prompt" ]; then
    exec "$@" <"$prompt"
fi
exec "$@"
