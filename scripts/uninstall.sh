#!/usr/bin/env bash
# Remove what scripts/install.sh added: stop and disable the service, delete the unit and the
# /opt/nodemedic virtual environment. /etc/nodemedic (config, rules, kubeconfig) is kept unless
# --purge is given. Called by `make uninstall` and tests/integration/test_install_script.py.
#
# Usage: scripts/uninstall.sh [--root DIR] [--purge]
#   --root DIR   uninstall below DIR instead of / (same as DESTDIR=DIR)
#   --purge      also delete /etc/nodemedic, including the kubeconfig
set -euo pipefail

ROOT="${DESTDIR:-}"
PURGE=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="$2"; shift 2 ;;
    --root=*) ROOT="${1#*=}"; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "uninstall.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
ROOT="${ROOT%/}"

log() { echo "uninstall.sh: $*"; }

UNIT="$ROOT/etc/systemd/system/nodemedic.service"
live=0
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then live=1; fi

if [ "$live" = 1 ] && [ -e "$UNIT" ]; then
  systemctl disable --now nodemedic.service || log "could not stop nodemedic.service; continuing"
fi
rm -f "$UNIT"
rm -rf "$ROOT/opt/nodemedic"
if [ "$live" = 1 ]; then
  systemctl daemon-reload
fi

if [ "$PURGE" = 1 ]; then
  rm -rf "$ROOT/etc/nodemedic"
  log "removed nodemedic, its configuration and credentials"
else
  [ -d "$ROOT/etc/nodemedic" ] && log "kept $ROOT/etc/nodemedic (use --purge to delete it)"
  log "removed nodemedic"
fi
