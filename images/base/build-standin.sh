#!/usr/bin/env bash
# Build a local stand-in for the official `node:20` image (or, with --python, for
# `python:3.11-slim-bookworm`, the service image's base) from Debian packages.
#
# Why: the agent image follows the official Claude Code devcontainer recipe,
# which starts `FROM node:20`. Hosts without access to a container registry
# (air-gapped, registry-blocked CI) cannot pull it, but usually can reach a
# Debian mirror. This script bootstraps a minimal Debian bookworm root
# filesystem with node, npm and git, adds the `node` user (uid/gid 1000, home
# /home/node, exactly like the official image) and imports it into Docker.
#
# Usage: bash images/base/build-standin.sh [--force] [--python] [TAG]
#   TAG              image tag (default: $STANDIN_IMAGE or
#                    claudecluster/node-standin:bookworm; with --python
#                    claudecluster/python-standin:bookworm)
#   --force          rebuild even if TAG already exists
#   --python         Debian's python3 (3.11) with venv and pip, git and CA
#                    certificates instead of node and npm; no `node` user
# Environment:
#   STANDIN_IMAGE    default tag (see above)
#   EXTRA_CA_BUNDLE  PEM file with extra CA certificates (TLS-intercepting
#                    proxies, corporate CAs) to trust inside the image;
#                    defaults to $SSL_CERT_FILE when that is set; set it to
#                    the empty string to add none
#   DEBIAN_MIRROR    default http://deb.debian.org/debian
#   DEBIAN_SECURITY_MIRROR  default http://deb.debian.org/debian-security
#
# Needs root (debootstrap and chroot), debootstrap and docker. Installs
# debootstrap with apt-get when it is missing.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

force=0
flavor=node
tag=""
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1 ;;
        --python) flavor=python ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "build-standin: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) tag="$1" ;;
    esac
    shift
done
tag="${tag:-${STANDIN_IMAGE:-claudecluster/$flavor-standin:bookworm}}"

suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
extra_ca="${EXTRA_CA_BUNDLE-${SSL_CERT_FILE:-}}"
# What a node:20-like base needs for the agent image: node + npm for the
# Claude Code install and the relay, git for the workspace, CA certificates
# for npm over TLS. bash, coreutils, grep, sed, findutils, tar, gzip come with
# minbase. Nothing else: the agent image adds what it needs.
# npm itself is installed with apt inside the root, not with debootstrap's
# --include: debootstrap's own resolver ignores virtual packages (Provides)
# and leaves Debian's npm (~400 node-* packages) unconfigured.
packages=nodejs,git,ca-certificates
# The service image's base: what `python:3.11-slim` gives it (python3 with venv and pip, as
# `python` too), git and CA certificates; it installs its own dependencies into a venv.
if [ "$flavor" = python ]; then
    packages=python3,python3-venv,python3-pip,python-is-python3,git,ca-certificates
fi

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
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
if [ -n "$extra_ca" ] && [ ! -r "$extra_ca" ]; then
    log "EXTRA_CA_BUNDLE=$extra_ca is not a readable file"
    exit 1
fi

start=$(date +%s)
# /var/tmp rather than /tmp: /tmp is often a nodev/noexec tmpfs, which breaks
# debootstrap (it creates device nodes and runs binaries inside the root).
rootfs=$(mktemp -d /var/tmp/claudecluster-standin.XXXXXX)
# Every path below is built from $rootfs; refuse to go on if it is not a
# fresh private directory, so a bug can never turn "$rootfs/usr" into /usr.
case "$rootfs" in /var/tmp/claudecluster-standin.?*) ;; *) log "bad temp dir '$rootfs'"; exit 1 ;; esac
cleanup() {
    # Unmount anything still mounted below the root before deleting it, so a
    # failed run can never make rm descend into the host's /proc.
    if mountpoint -q "$rootfs/proc"; then umount -l "$rootfs/proc" || true; fi
    rm -rf --one-file-system "$rootfs" "$rootfs.log"
}
trap cleanup EXIT

# Run a noisy step with its output in a log, shown only when the step fails.
quiet() {
    if ! "$@" >>"$rootfs.log" 2>&1; then
        tail -n 30 "$rootfs.log" >&2
        log "failed: $*"
        exit 1
    fi
}
elapsed() { echo "$(( $(date +%s) - start ))s"; }

log "debootstrap $suite (minbase + $packages) from $mirror"
quiet debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror"
log "debootstrap done at $(elapsed)"

in_root() {
    chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"
}
# No /dev/pts and a root-owned apt cache in the chroot: tell apt not to try
# a pty or the _apt sandbox user (both only cause warnings).
apt_opts=(-qq -o Dpkg::Use-Pty=0 -o APT::Sandbox::User=root)

# debootstrap only knows the release suite; add updates and security so the
# image gets current fixes (the real node image is rebuilt on every update).
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security_mirror $suite-security main
EOF

# Like debian:bookworm-slim: keep docs, man pages and translations out of the
# image (copyright files stay). Applies to everything apt installs from here
# on, including later layers of the agent image.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
# Build time only: skip dpkg's fsyncs (a crash just means rebuilding).
echo force-unsafe-io >"$rootfs/etc/dpkg/dpkg.cfg.d/zz-build-unsafe-io"

mount -t proc proc "$rootfs/proc"
log "apt: $suite-updates + $suite-security upgrade, then the $flavor packages"
quiet in_root apt-get "${apt_opts[@]}" update
quiet in_root apt-get "${apt_opts[@]}" -y -o Dpkg::Options::=--force-confold dist-upgrade

# Extra CA (apt above used plain http), so that npm inside the image trusts
# TLS-intercepting proxies the same way the host does. EXTRA_CA_BUNDLE is
# often a whole system bundle (e.g. $SSL_CERT_FILE): only the certificates
# not already in the (upgraded) Debian store are installed, one per file as
# update-ca-certificates expects. The image then trusts exactly what the
# bundle trusts plus Debian's store; pass a file holding only the extra CA
# to add just that.
extra_count=0
if [ -n "$extra_ca" ]; then
    extra_count=$(awk -v dir="$rootfs/usr/local/share/ca-certificates" '
        FNR == 1 { fileno++ }
        /-----BEGIN CERTIFICATE-----/ { inpem = 1; pem = ""; body = "" }
        inpem { pem = pem $0 "\n"; if ($0 !~ /-----/) { gsub(/[ \t\r]/, ""); body = body $0 } }
        /-----END CERTIFICATE-----/ {
            inpem = 0
            if (fileno == 1) known[body] = 1
            else if (!(body in known)) {
                known[body] = 1; n++
                f = sprintf("%s/claudecluster-extra-ca-%03d.crt", dir, n)
                printf "%s", pem > f; close(f)
            }
        }
        END { print n + 0 }' "$rootfs/etc/ssl/certs/ca-certificates.crt" "$extra_ca")
    log "extra CA bundle $extra_ca: $extra_count certificate(s) not already in Debian's store"
fi

if [ "$flavor" = node ]; then
    quiet in_root apt-get "${apt_opts[@]}" -y --no-install-recommends install npm
fi
quiet in_root update-ca-certificates
log "apt done at $(elapsed)"

if [ "$flavor" = node ]; then
    # The official node image's user: uid/gid 1000, home /home/node, bash.
    in_root groupadd --gid 1000 node
    in_root useradd --uid 1000 --gid node --shell /bin/bash --create-home node
    node_version=$(in_root node --version)
    npm_version=$(in_root npm --version)
else
    python_version=$(in_root python3 -c 'import platform; print(platform.python_version())')
fi

# Keep the image lean and free of build-host state.
in_root apt-get clean
umount "$rootfs/proc"
rm -f "$rootfs/etc/dpkg/dpkg.cfg.d/zz-build-unsafe-io"
# Docs unpacked by debootstrap before the exclude list existed.
find "$rootfs/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs/usr/share/info/"* "$rootfs/usr/share/locale/"* "$rootfs/usr/share/man/"*
rm -rf "$rootfs/var/lib/apt/lists/"* "$rootfs/var/cache/apt/"*.bin
rm -rf "$rootfs/var/cache/debconf/"*-old "$rootfs/var/lib/dpkg/"*-old
rm -rf "$rootfs/var/log/"* "$rootfs/tmp/"* "$rootfs/root/.npm"
rm -f "$rootfs.log"
# Docker provides these at run time; do not bake the build host's into the image.
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/hostname"

# Image config mirrors the official image where it matters (PATH, CMD node).
# NODE_EXTRA_CA_CERTS makes every node binary (not only Debian's, which
# already reads the system store) trust the extra CA.
changes=(-c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
if [ "$flavor" = node ]; then
    changes+=(-c 'CMD ["node"]'
              -c "LABEL claudecluster.standin=$suite claudecluster.node-version=$node_version claudecluster.npm-version=$npm_version")
    described="node $node_version, npm $npm_version"
else
    changes+=(-c 'CMD ["python3"]'
              -c "LABEL claudecluster.standin=$suite claudecluster.python-version=$python_version")
    described="python $python_version"
fi
if [ "$flavor" = node ] && [ "$extra_count" -gt 0 ]; then
    changes+=(-c 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt')
fi

old_id=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
log "importing into docker as $tag ($described)"
# --numeric-owner: keep uid/gid numbers, never remap them through host names.
tar --numeric-owner -C "$rootfs" -c . \
    | docker import "${changes[@]}" -m "claudecluster $flavor stand-in (debootstrap $suite)" - "$tag" >/dev/null

# With --force, the image the tag pointed at is now unreferenced: drop it
# rather than leave it behind (fails harmlessly while something uses it).
if [ -n "$old_id" ]; then docker image rm "$old_id" >/dev/null 2>&1 || true; fi
size=$(docker image inspect -f '{{.Size}}' "$tag")
log "built $tag in $(elapsed), $(( size / 1000000 )) MB"
