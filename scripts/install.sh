#!/usr/bin/env bash
# Install nodemedic from this checkout: the package into its own virtual environment under
# /opt/nodemedic, the systemd unit, and the default config, environment file and rules under
# /etc/nodemedic. Called by `make install` (and by tests/integration/test_install_script.py with
# --root pointing at a temporary directory).
#
# Usage: scripts/install.sh [--root DIR] [--python PYTHON] [--source DIR] [--offline] [--enable]
#   --root DIR     install below DIR instead of / (same as DESTDIR=DIR); for tests and staging.
#                  The venv's scripts then name DIR in their #! lines: a venv is not relocatable.
#   --python PY    interpreter for the venv (default: python3; 3.11 or newer)
#   --source DIR   checkout to install from (default: the checkout holding this script)
#   --offline      install from the wheels in SOURCE/wheels with no network (the bundle that
#                  `make dist` builds); the wheels must match PYTHON's version
#   --enable       systemctl enable --now nodemedic after installing (only with --root /)
# Environment: NODEMEDIC_PIP_ARGS adds pip install arguments (e.g. "--no-index --find-links DIR"
# for an offline install).
#
# Existing /etc/nodemedic files are operator-owned and never overwritten: a changed default is
# written next to them as <file>.dist and reported.
set -euo pipefail

ROOT="${DESTDIR:-}"
PYTHON=python3
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENABLE=0
OFFLINE=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="$2"; shift 2 ;;
    --root=*) ROOT="${1#*=}"; shift ;;
    --python) PYTHON="$2"; shift 2 ;;
    --python=*) PYTHON="${1#*=}"; shift ;;
    --source) SOURCE="$2"; shift 2 ;;
    --source=*) SOURCE="${1#*=}"; shift ;;
    --enable) ENABLE=1; shift ;;
    --offline) OFFLINE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
ROOT="${ROOT%/}"

OPT="$ROOT/opt/nodemedic"
ETC="$ROOT/etc/nodemedic"
UNIT_DIR="$ROOT/etc/systemd/system"

log() { echo "install.sh: $*"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || die "$PYTHON is missing or older than Python 3.11"
WHEELS="$SOURCE/wheels"
if [ "$OFFLINE" = 1 ]; then
  ls "$WHEELS"/nodemedic-*.whl >/dev/null 2>&1 \
    || die "$WHEELS holds no nodemedic wheel (is $SOURCE an offline bundle from make dist?)"
  want="$(cat "$WHEELS/PYTHON_VERSION" 2>/dev/null || true)"
  have="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  [ -z "$want" ] || [ "$want" = "$have" ] \
    || die "the bundle's wheels are for Python $want, $PYTHON is $have (use --python python$want)"
elif [ ! -f "$SOURCE/pyproject.toml" ] || [ ! -d "$SOURCE/agent" ]; then
  die "$SOURCE is not a nodemedic checkout"
fi

# Copy one default into /etc/nodemedic without clobbering an operator's edited copy.
install_config() {
  local src="$1" dst="$2" mode="$3"
  if [ -e "$dst" ]; then
    if ! cmp -s "$src" "$dst"; then
      install -m "$mode" "$src" "$dst.dist"
      log "kept your $dst; the new default is in $dst.dist"
    fi
  else
    install -m "$mode" "$src" "$dst"
  fi
}

# 1. Package into its own venv. Build from a copy so the checkout stays untouched (pip would
#    otherwise write build/ and *.egg-info into it) and a read-only checkout works.
log "creating virtual environment in $OPT/venv"
install -d -m 0755 "$OPT"
"$PYTHON" -m venv --clear "$OPT/venv"
if [ "$OFFLINE" = 1 ]; then
  # shellcheck disable=SC2086 # NODEMEDIC_PIP_ARGS is a list of arguments on purpose
  "$OPT/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
    --find-links "$WHEELS" ${NODEMEDIC_PIP_ARGS:-} nodemedic
else
  stage="$(mktemp -d)"
  trap 'rm -rf "$stage"' EXIT
  members=(pyproject.toml agent)
  for f in README.md LICENSE; do [ -e "$SOURCE/$f" ] && members+=("$f"); done
  tar -C "$SOURCE" --exclude=__pycache__ -cf - "${members[@]}" | tar -C "$stage" -xf -
  # shellcheck disable=SC2086 # NODEMEDIC_PIP_ARGS is a list of arguments on purpose
  "$OPT/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    ${NODEMEDIC_PIP_ARGS:-} "$stage"
fi
[ -x "$OPT/venv/bin/nodemedic" ] || die "pip did not install the nodemedic command"

# 2. systemd unit.
install -d -m 0755 "$UNIT_DIR"
install -m 0644 "$SOURCE/systemd/nodemedic.service" "$UNIT_DIR/nodemedic.service"

# 3. Configuration, environment file, default rules and problem definitions. 0750/0640: the kubeconfig and kubelet
#    token that live here are credentials.
install -d -m 0750 "$ETC" "$ETC/rules" "$ETC/problems"
install_config "$SOURCE/systemd/config.yaml" "$ETC/config.yaml" 0640
install_config "$SOURCE/systemd/nodemedic.env" "$ETC/nodemedic.env" 0640
shopt -s nullglob
for rule in "$SOURCE"/rules/*.yaml; do
  install_config "$rule" "$ETC/rules/$(basename "$rule")" 0640
done
# Node problem definitions (--problems.dir); NPD monitor JSON files may be added here as is.
for def in "$SOURCE"/problems/*.yaml; do
  install_config "$def" "$ETC/problems/$(basename "$def")" 0640
done
shopt -u nullglob

if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if [ "$ENABLE" = 1 ]; then
    systemctl enable --now nodemedic.service
  fi
elif [ "$ENABLE" = 1 ]; then
  log "--enable ignored: not installing into a running system's root"
fi

log "installed nodemedic $("$OPT/venv/bin/python" -c 'from importlib.metadata import version; print(version("nodemedic"))')"
if [ ! -e "$ETC/kubeconfig" ]; then
  log "next: write the API credentials to $ETC/kubeconfig (mode 0600), see docs/install.md"
fi
log "the service starts in --dry-run (see $ETC/nodemedic.env); start it with: systemctl enable --now nodemedic"
