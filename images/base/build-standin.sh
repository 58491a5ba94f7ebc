#!/usr/bin/env bash
# Build a local stand-in for the official `node:20` image from Debian packages.
#
# Why: the agent image follows the official Claude Code devcontainer recipe,
# which starts `FROM node:20`. Hosts without access to a container registry
# (air-gapped, registry-blocked CI) cannot pull it, but usually can reach a
# Debian mirror. This script bootstraps a minimal Debian bookworm root
# filesystem with node, npm and git, adds the `node` user (uid/gid 1000, home
# /home/node, exactly like the official image) and imports it into Docker.
#
# Usage: bash images/base/build-standin.sh [--force] [TAG]
#   TAG              image tag (default: $STANDIN_IMAGE or
#                    claudecluster/node-standin:bookworm)
#   --force          rebuild even if TAG already exists
# Environment:
#   STANDIN_IMAGE    default tag (see above)
#   EXTRA_CA_BUNDLE  PEM file with extra CA certificates (TLS-intercepting
#                    proxies, corporate CAs) to trust inside the image;
#                    defaults to $SSL_CERT_FILE when that is set
#   DEBIAN_MIRROR    default http://deb.debian.org/debian
#   DEBIAN_SECURITY_MIRROR  default http://deb.debian.org/debian-security
#
# Needs root (debootstrap and chroot), debootstrap and docker. Installs
# debootstrap with apt-get when it is missing.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

force=0
tag="${STANDIN_IMAGE:-claudecluster/node-standin:bookworm}"
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "build-standin: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) tag="$1" ;;
    esac
    shift
done

suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
extra_ca="${EXTRA_CA_BUNDLE-${SSL_CERT_FILE:-}}"
# What a node:20-like base needs for the agent image: node + npm for the
# Claude Code install and the relay, git for the workspace, CA certificates
# for npm over TLS. bash, coreutils, grep, sed, findutils, tar, gzip come with
# minbase. Nothing else: the agent image adds what it needs.
packages=nodejs,npm,git,ca-certificates

log() { printf 'build-standin: %s\n' "$*" >&2; }

if [ "$force" -eq 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    log "$tag already exists, skipping (use --force to rebuild)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (debootstrap and chroot need it)"
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    log "debootstrap missing, installing it with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
if [ -n "$extra_ca" ] && [ ! -r "$extra_ca" ]; then
    log "EXTRA_CA_BUNDLE=$extra_ca is not a readable file"
    exit 1
fi

start=$(date +%s)
# /var/tmp rather than /tmp: /tmp is often a nodev/noexec tmpfs, which breaks
# debootstrap (it creates device nodes and runs binaries inside the root).
rootfs=$(mktemp -d /var/tmp/claudecluster-standin.XXXXXX)
cleanup() {
    # Unmount anything still mounted below the root before deleting it, so a
    # failed run can never make rm descend into the host's /proc.
    if [ -d "$rootfs" ]; then
        grep -o " $rootfs/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
        rm -rf --one-file-system "$rootfs"
    fi
}
trap cleanup EXIT

log "debootstrap $suite (minbase + $packages) from $mirror"
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
    >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

in_root() { chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }

# debootstrap only knows the release suite; add updates and security so the
# image gets current fixes (the real node image is rebuilt on every update).
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security_mirror $suite-security main
EOF

# Extra CA first, so that npm inside the image (and any later apt over https)
# trusts TLS-intercepting proxies the same way the host does.
if [ -n "$extra_ca" ]; then
    log "installing extra CA bundle $extra_ca"
    install -m 0644 "$extra_ca" "$rootfs/usr/local/share/ca-certificates/claudecluster-extra-ca.crt"
fi

mount -t proc proc "$rootfs/proc"
log "applying $suite-updates / $suite-security"
in_root apt-get update -qq
in_root apt-get -y -qq -o Dpkg::Options::=--force-confold dist-upgrade >/dev/null
in_root update-ca-certificates >/dev/null

# The official node image's user: uid/gid 1000, home /home/node, bash.
in_root groupadd --gid 1000 node
in_root useradd --uid 1000 --gid node --shell /bin/bash --create-home node

node_version=$(in_root node --version)

# Keep the image lean and free of host state.
in_root apt-get clean
umount "$rootfs/proc"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old \
    "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/root/.npm
# Docker provides these at run time; do not bake the build host's into the image.
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/hostname"

# Image config mirrors the official image where it matters (PATH, CMD node).
# NODE_EXTRA_CA_CERTS makes every node binary (not only Debian's, which uses
# the system store) trust the extra CA.
changes=(-c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
         -c 'CMD ["node"]')
if [ -n "$extra_ca" ]; then
    changes+=(-c 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt')
fi

log "importing into docker as $tag (node $node_version)"
# --numeric-owner: keep uid/gid numbers, never remap them through host names.
tar --numeric-owner -C "$rootfs" -c . | docker import "${changes[@]}" \
    -c "LABEL claudecluster.standin=bookworm claudecluster.node-version=$node_version" \
    -m "claudecluster stand-in for node:20 (debootstrap $suite)" - "$tag" >/dev/null

log "built $tag in $(( $(date +%s) - start ))s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
