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
#   CLAUDECLUSTER_EGRESS_SOCKET   default /run/claudecluster/egress.sock (registries proxy, if present)
#   CLAUDECLUSTER_EGRESS_PORT     default 8788
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

case "$wait_s" in ''|*[!0-9]*) die "CLAUDECLUSTER_RELAY_WAIT='$wait_s' is not a whole number of seconds" ;; esac

# start_relay PORT SOCKET: expose a host-side Unix socket on 127.0.0.1:PORT and wait until the
# port accepts connections (bounded). The probe never reaches the socket: the relay connects
# upstream on the first byte. Relay output goes to stderr: stdout carries the CLI's stream-json.
start_relay() {
    local relay_port=$1 relay_socket=$2 relay_pid deadline
    [ -S "$relay_socket" ] || die "$relay_socket exists but is not a Unix socket"
    case "$relay_port" in ''|*[!0-9]*) die "'$relay_port' is not a port number" ;; esac
    node "$relay" --port "$relay_port" --socket "$relay_socket" >&2 &
    relay_pid=$!
    deadline=$(( $(date +%s%N) / 1000000 + wait_s * 1000 ))
    until (exec 3<>"/dev/tcp/127.0.0.1/$relay_port") 2>/dev/null; do
        kill -0 "$relay_pid" 2>/dev/null || die "relay exited before listening on 127.0.0.1:$relay_port (see its message above)"
        [ "$(( $(date +%s%N) / 1000000 ))" -lt "$deadline" ] \
            || die "relay not accepting connections on 127.0.0.1:$relay_port after ${wait_s}s"
        sleep 0.05
    done
}

if [ -e "$socket" ]; then
    start_relay "$port" "$socket"
    export ANTHROPIC_BASE_URL="${ANTHROPIC_BASE_URL:-http://127.0.0.1:$port}"
fi

# Package registries, only when the repository's config allows them: the worker then serves an
# allowlisting egress proxy on egress.sock. Everything else stays unreachable.
egress="${CLAUDECLUSTER_EGRESS_SOCKET:-/run/claudecluster/egress.sock}"
egress_port="${CLAUDECLUSTER_EGRESS_PORT:-8788}"
if [ -e "$egress" ]; then
    start_relay "$egress_port" "$egress"
    proxy="http://127.0.0.1:$egress_port"
    export HTTPS_PROXY="$proxy" https_proxy="$proxy" HTTP_PROXY="$proxy" http_proxy="$proxy"
    # The model gateway is local: never send it through the proxy.
    export NO_PROXY="127.0.0.1,localhost" no_proxy="127.0.0.1,localhost"
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
