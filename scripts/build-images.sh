#!/usr/bin/env bash
# Build the ClaudeCluster container images: the one script for it.
#
#   1. Base image: $BASE_IMAGE (default node:20, as in the official Claude
#      Code devcontainer) if it is present locally or can be pulled;
#      otherwise (no registry reachable) a stand-in built from Debian
#      packages by images/base/build-standin.sh, tagged $STANDIN_IMAGE.
#   2. Agent image $AGENT_IMAGE from images/agent/Dockerfile on that base.
#      Reused when the existing image carries a label with the hash of the
#      same build inputs (Dockerfile, entrypoint, relay, base image id, Claude
#      Code version, extra CA certificates).
#   3. With --service, for deploy/compose.yaml: the service image
#      $SERVICE_IMAGE from images/service/Dockerfile on $PYTHON_IMAGE, or on
#      a Debian stand-in (build-standin.sh --python) when that cannot be
#      pulled; and, when $REDIS_IMAGE can be neither found nor pulled, a Redis
#      stand-in from images/redis, whose tag it prints for REDIS_IMAGE.
#
# Usage: bash scripts/build-images.sh [--force] [--force-base] [--service]
#   --force        rebuild the agent image even if its inputs are unchanged
#   --force-base   also rebuild the stand-in base (only used when it is needed)
#   --service      also build the service image (and a Redis stand-in if needed)
# Environment:
#   BASE_IMAGE           default node:20
#   AGENT_IMAGE          default claudecluster/agent:latest
#   STANDIN_IMAGE        default claudecluster/node-standin:bookworm
#   CLAUDE_CODE_VERSION  default: the ARG default in images/agent/Dockerfile
#   EXTRA_CA_BUNDLE      PEM file of extra CA certificates needed to reach
#                        the npm registry / Debian mirror (TLS-intercepting
#                        proxy, corporate CA); default $SSL_CERT_FILE when
#                        set; empty string for none
#   BUILD_NETWORK        network for the build's RUN steps, default host
#   BASE_PULL_TIMEOUT    seconds allowed for pulling BASE_IMAGE, default 120
#   SERVICE_IMAGE        default claudecluster/service:latest
#   PYTHON_IMAGE         default: the ARG default in images/service/Dockerfile
#   REDIS_IMAGE          default redis:7 (as deploy/compose.yaml)
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

force=0
force_base=0
service=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --force-base) force=1; force_base=1 ;;
        --service) service=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-images: unknown argument $arg" >&2; usage >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
agent_dir="$repo/images/agent"
base_image="${BASE_IMAGE:-node:20}"
agent_image="${AGENT_IMAGE:-claudecluster/agent:latest}"
standin_image="${STANDIN_IMAGE:-claudecluster/node-standin:bookworm}"
# One source of truth for the pinned version: the Dockerfile's ARG default.
default_version=$(sed -n 's/^ARG CLAUDE_CODE_VERSION=//p' "$agent_dir/Dockerfile")
claude_version="${CLAUDE_CODE_VERSION:-$default_version}"
extra_ca="${EXTRA_CA_BUNDLE-${SSL_CERT_FILE:-}}"
# Host network for RUN steps: they then resolve and connect exactly as the
# host does (its DNS, its proxy), with no bridge or NAT in between.
build_network="${BUILD_NETWORK:-host}"
pull_timeout="${BASE_PULL_TIMEOUT:-120}"
label_key=claudecluster.build-inputs

log() { printf 'build-images: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
now() { date +%s; }
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
mb() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%d MB", $1 / 1e6}'; }

docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon (is dockerd running?)"
[ -n "$claude_version" ] || die "no CLAUDE_CODE_VERSION (and no ARG default in $agent_dir/Dockerfile)"
if [ -n "$extra_ca" ] && [ ! -r "$extra_ca" ]; then
    die "EXTRA_CA_BUNDLE=$extra_ca is not a readable file"
fi
t0=$(now)

# --- 1. base image -----------------------------------------------------------
t=$(now)
if image_exists "$base_image"; then
    base="$base_image"
    log "base: $base (present locally)"
elif timeout "$pull_timeout" docker pull -q "$base_image" >/dev/null 2>&1; then
    base="$base_image"
    log "base: $base (pulled in $(( $(now) - t ))s)"
else
    log "base: $base_image not present and cannot be pulled; using stand-in $standin_image"
    standin_args=()
    [ "$force_base" -eq 1 ] && standin_args+=(--force)
    # bash, not ./: no reliance on exec bits in a fresh clone.
    EXTRA_CA_BUNDLE="$extra_ca" bash "$repo/images/base/build-standin.sh" \
        "${standin_args[@]+"${standin_args[@]}"}" "$standin_image"
    base="$standin_image"
    log "base: $base ready in $(( $(now) - t ))s ($(mb "$base"))"
fi
base_id=$(docker image inspect -f '{{.Id}}' "$base")

# --- 2. build context --------------------------------------------------------
ctx=$(mktemp -d "${TMPDIR:-/tmp}/claudecluster-agent-ctx.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
cp "$agent_dir/Dockerfile" "$ctx/Dockerfile"
cp "$agent_dir/sandbox-entrypoint.sh" "$ctx/sandbox-entrypoint.sh"
cp "$agent_dir/relay.js" "$ctx/relay.js"

# Extra CA: only the certificates the base does not already trust. The bundle
# is often a whole system store ($SSL_CERT_FILE); adding it again would just
# duplicate ~150 certificates, and on a stand-in base built with the same
# bundle nothing is left to add.
: >"$ctx/extra-ca.pem"
if [ -n "$extra_ca" ]; then
    docker run --rm --network none --user 0 --entrypoint cat "$base" \
        /etc/ssl/certs/ca-certificates.crt >"$ctx/base-ca.pem" 2>/dev/null || : >"$ctx/base-ca.pem"
    n=$(awk -v out="$ctx/extra-ca.pem" '
        FNR == 1 { fileno++ }
        /-----BEGIN CERTIFICATE-----/ { inpem = 1; pem = ""; body = "" }
        inpem { pem = pem $0 "\n"; if ($0 !~ /-----/) { gsub(/[ \t\r]/, ""); body = body $0 } }
        /-----END CERTIFICATE-----/ {
            inpem = 0
            if (fileno == 1) known[body] = 1
            else if (!(body in known)) { known[body] = 1; n++; printf "%s", pem >> out }
        }
        END { print n + 0 }' "$ctx/base-ca.pem" "$extra_ca")
    rm -f "$ctx/base-ca.pem"
    log "extra CA: $n certificate(s) from $extra_ca not already trusted by the base"
fi

# --- 3. agent image ----------------------------------------------------------
# The hash covers everything that changes the image; the label on the built
# image lets the next run see that nothing changed.
inputs_hash=$(
    {
        printf 'base-id %s\nclaude-code %s\n' "$base_id" "$claude_version"
        for f in Dockerfile sandbox-entrypoint.sh relay.js extra-ca.pem; do
            printf '%s %s\n' "$f" "$(sha256sum <"$ctx/$f" | cut -d' ' -f1)"
        done
    } | sha256sum | cut -d' ' -f1
)
current=""
if image_exists "$agent_image"; then
    current=$(docker image inspect -f "{{ index .Config.Labels \"$label_key\" }}" "$agent_image")
fi

if [ "$force" -eq 0 ] && [ "$current" = "$inputs_hash" ]; then
    log "agent: $agent_image is up to date (inputs ${inputs_hash:0:12}), reused"
else
    old_id=""
    image_exists "$agent_image" && old_id=$(docker image inspect -f '{{.Id}}' "$agent_image")
    log "agent: building $agent_image (base $base, claude-code $claude_version, inputs ${inputs_hash:0:12})"
    t=$(now)
    # --force-rm: the legacy builder otherwise keeps the container of a
    # failed step (and its parent layers) around.
    docker build \
        --network "$build_network" \
        --force-rm \
        --build-arg BASE_IMAGE="$base" \
        --build-arg CLAUDE_CODE_VERSION="$claude_version" \
        --label "$label_key=$inputs_hash" \
        --label "claudecluster.base-image=$base" \
        --tag "$agent_image" \
        "$ctx"
    log "agent: built $agent_image in $(( $(now) - t ))s ($(mb "$agent_image"))"
    # The image the tag used to point at is now unreferenced: drop it rather
    # than leave ~1 GB behind on every rebuild (fails harmlessly if in use).
    new_id=$(docker image inspect -f '{{.Id}}' "$agent_image")
    if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true
    fi
fi

# --- 4. service image and Redis (--service) ----------------------------------
pullable() { image_exists "$1" || timeout "$pull_timeout" docker pull -q "$1" >/dev/null 2>&1; }

if [ "$service" -eq 1 ]; then
    service_image="${SERVICE_IMAGE:-claudecluster/service:latest}"
    python_image="${PYTHON_IMAGE:-$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$repo/images/service/Dockerfile")}"
    redis_image="${REDIS_IMAGE:-redis:7}"
    python_standin=claudecluster/python-standin:bookworm
    t=$(now)
    if pullable "$python_image"; then
        python_base="$python_image"
    else
        log "service: $python_image not present and cannot be pulled; using stand-in $python_standin"
        standin_args=(--python)
        [ "$force_base" -eq 1 ] && standin_args+=(--force)
        EXTRA_CA_BUNDLE="$extra_ca" bash "$repo/images/base/build-standin.sh" \
            "${standin_args[@]}" "$python_standin"
        python_base="$python_standin"
    fi
    # The files the Dockerfile copies (the repository's .dockerignore lists the same), and the
    # extra CA as for the agent image.
    svc_ctx="$ctx/service"
    mkdir -p "$svc_ctx/images/service"
    cp "$repo/images/service/Dockerfile" "$svc_ctx/images/service/Dockerfile"
    (cd "$repo" && cp -r pyproject.toml app jobs Procfile app.yml gunicorn.conf.py "$svc_ctx/")
    find "$svc_ctx" -name __pycache__ -type d -prune -exec rm -rf {} +
    cp "$ctx/extra-ca.pem" "$svc_ctx/extra-ca.pem"
    log "service: building $service_image on $python_base"
    docker build --network "$build_network" --force-rm \
        --build-arg PYTHON_IMAGE="$python_base" \
        --label "claudecluster.base-image=$python_base" \
        --file "$svc_ctx/images/service/Dockerfile" --tag "$service_image" "$svc_ctx"
    log "service: built $service_image in $(( $(now) - t ))s ($(mb "$service_image"))"

    if pullable "$redis_image"; then
        log "redis: $redis_image available"
    else
        redis_standin=claudecluster/redis-standin:bookworm
        if ! pullable "$python_standin"; then
            EXTRA_CA_BUNDLE="$extra_ca" bash "$repo/images/base/build-standin.sh" \
                --python "$python_standin"
        fi
        docker build --network "$build_network" --force-rm --quiet \
            --build-arg BASE_IMAGE="$python_standin" \
            --tag "$redis_standin" "$repo/images/redis" >/dev/null
        log "redis: $redis_image cannot be pulled; built stand-in $redis_standin. Run compose with"
        log "  export REDIS_IMAGE=$redis_standin"
    fi
fi

log "done in $(( $(now) - t0 ))s: base $base, agent $agent_image ($(mb "$agent_image"))"
