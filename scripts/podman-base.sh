#!/usr/bin/env bash
# Prepare this machine to build and run the project's image without a Docker engine or a reachable registry:
# Debian's podman with runc and vfs storage, and a CPU base image made by debootstrap from the apt mirror.
#
#   scripts/podman-base.sh [BASE_NAME]     (default localhost/sibeatgan-base:cpu; run as root)
#
# The base is what the Dockerfile's BASE build argument expects: python (3.11) on PATH with pip, and torch.
# On a cluster the default base, pytorch/pytorch (CUDA), brings both. Here a Debian bookworm minbase gets
# python3 and a venv at /opt/venv holding the CPU torch wheel (PIP_FIND_LINKS, /opt/wheels on this machine).
set -euo pipefail

BASE_NAME=${1:-localhost/sibeatgan-base:cpu}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
SUITE=bookworm
# The machine's own apt mirror (deb822 sources first, then the classic list).
MIRROR=${MIRROR:-$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -oE '^(URIs:|deb) +https?://[^ ]+' | grep -v security | head -1 | awk '{print $2}' || true)}
[ -n "$MIRROR" ] || { echo "podman-base.sh: no apt mirror found in /etc/apt; set MIRROR" >&2; exit 1; }

need=()
for cmd in podman runc debootstrap; do command -v "$cmd" > /dev/null || need+=("$cmd"); done
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends podman runc debootstrap uidmap
fi

# vfs storage (no overlay mounts inside this sandbox), runc, cgroupfs, and limits a container may raise to.
mkdir -p /etc/containers
if ! grep -q '^driver *= *"vfs"' /etc/containers/storage.conf 2>/dev/null; then
    cat > /etc/containers/storage.conf <<'CONF'
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
CONF
fi
if ! grep -q 'cgroup_manager *= *"cgroupfs"' /etc/containers/containers.conf 2>/dev/null; then
    cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
netns = "host"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
fi

if podman image exists "$BASE_NAME"; then
    echo "podman-base.sh: $BASE_NAME exists (podman rmi it to rebuild)"
    exit 0
fi

# ROOTFS: a folder an earlier, interrupted run debootstrapped (kept); otherwise a new one.
if [ -n "${ROOTFS:-}" ] && [ -x "$ROOTFS/usr/bin/python3" ]; then
    root=$ROOTFS
else
    root=$(mktemp -d /var/tmp/sibeatgan-base.XXXXXX)
    chmod 755 "$root"  # it becomes the image's /: mktemp's 700 would lock every non-root user out of the whole image
    echo "podman-base.sh: debootstrap $SUITE from $MIRROR into $root"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$root" "$MIRROR" > "$root.log" 2>&1 \
        || { tail -20 "$root.log" >&2; exit 1; }
    rm -f "$root.log"
fi
trap 'umount "$root/proc" 2>/dev/null || true; rm -rf "$root"' EXIT

# torch into /opt/venv inside the new root: the wheel from PIP_FIND_LINKS (copied in), its dependencies from PyPI,
# through this machine's CA bundle (PIP_CERT: a proxy's CA may sign PyPI here) and nothing else of its environment.
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$root/tmp/host-ca.crt"
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
mkdir -p "$root/tmp/wheels"
for dir in ${PIP_FIND_LINKS:-}; do
    [ -d "$dir" ] && cp "$dir"/torch-*.whl "$root/tmp/wheels/" 2>/dev/null || true
done
in_root() { chroot "$root" env -i PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
[ -x "$root/opt/venv/bin/pip" ] || in_root python3 -m venv /opt/venv
in_root pip install --no-cache-dir --disable-pip-version-check --cert /tmp/host-ca.crt --find-links /tmp/wheels "$TORCH_SPEC"
in_root python -c "import torch; print('podman-base.sh: torch', torch.__version__)"
umount "$root/proc"
rm -rf "$root/tmp/wheels" "$root/tmp/host-ca.crt" "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*
: > "$root/etc/resolv.conf"

chmod 755 "$root"
tar -C "$root" -c . | podman import \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python"]' - "$BASE_NAME"
echo "podman-base.sh: built $BASE_NAME"
