#!/usr/bin/env bash
# Build (once) the Debian 12 rootfs the real-systemd tests boot with systemd-nspawn, and print
# its path. Cached under ~/.cache/nodemedic/rootfs-<hash>, outside the work tree; the hash
# covers this script, so changing the package list or suite builds a new one. Rootfs
# directories of other hashes are removed once they are a day old.
#
# Usage: tests/system/build_rootfs.sh   (root; needs debootstrap, network to the Debian mirror)
# Environment: NODEMEDIC_DEBIAN_MIRROR (default http://deb.debian.org/debian)
set -euo pipefail

SUITE=bookworm
MIRROR="${NODEMEDIC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# systemd as PID 1 and dbus for systemctl; python3 because nodemedic's .deb depends on it and
# is installed with no network; procps for the tests' pgrep/kill.
INCLUDE=systemd,systemd-sysv,dbus,python3,procps

[ "$(id -u)" = 0 ] || { echo "build_rootfs.sh: must run as root" >&2; exit 1; }
command -v debootstrap >/dev/null || {
  echo "build_rootfs.sh: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/nodemedic"
hash="$( (cat "$0"; echo "$SUITE $INCLUDE") | sha256sum | cut -c1-12)"
ROOTFS="$CACHE/rootfs-$hash"
if [ -f "$ROOTFS/.complete" ]; then
  echo "$ROOTFS"; exit 0
fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ ! -f "$ROOTFS/.complete" ]; then
  rm -rf "$ROOTFS.partial"
  debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS.partial" "$MIRROR" \
    > "$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # The container has no network and no console login: nothing to wait for at boot.
  rm -f "$ROOTFS.partial/etc/machine-id"
  : > "$ROOTFS.partial/etc/machine-id"
  chroot "$ROOTFS.partial" systemctl mask systemd-networkd-wait-online.service \
    systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
  chroot "$ROOTFS.partial" apt-get clean
  touch "$ROOTFS.partial/.complete"
  mv "$ROOTFS.partial" "$ROOTFS"
  # Another checkout may be booting an older one right now: only day-old ones are removed.
  find "$CACHE" -maxdepth 1 -name 'rootfs-*' ! -path "$ROOTFS" -mmin +1440 \
    -exec rm -rf {} + 2>/dev/null || true
fi
echo "$ROOTFS"
