#!/usr/bin/env bash
# Build dist/nodemedic-<version>-offline-py<X.Y>-<arch>.tar.gz: an offline bundle for
# distributions without dpkg. It holds wheels of nodemedic and every dependency for the target
# Python (this machine's /usr/bin/python3 unless PYTHON says otherwise), the unit, the default
# config and rules, and scripts/install.sh, which installs it with no network:
#   tar xzf nodemedic-*.tar.gz && cd nodemedic-*/ && sudo scripts/install.sh --offline
# Called by `make dist`.
#
# Usage: packaging/build-dist.sh [--out DIR]
# Environment: PYTHON (target interpreter), NODEMEDIC_PIP_ARGS (extra pip arguments).
set -euo pipefail

SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$SOURCE/dist"
PYTHON="${PYTHON:-/usr/bin/python3}"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    *) echo "build-dist.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
die() { echo "build-dist.sh: error: $*" >&2; exit 1; }
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python $PYVER < 3.11"
VERSION="$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$SOURCE/pyproject.toml")"
ARCH="$(uname -m)"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$SOURCE" log -1 --format=%ct 2>/dev/null || date +%s)}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
name="nodemedic-$VERSION"
top="$work/$name"
mkdir -p "$top/wheels" "$work/src"
members=(pyproject.toml agent)
for f in README.md LICENSE; do [ -e "$SOURCE/$f" ] && members+=("$f"); done
tar -C "$SOURCE" --exclude=__pycache__ -cf - "${members[@]}" | tar -C "$work/src" -xf -
"$PYTHON" -m venv "$work/venv"
# shellcheck disable=SC2086 # NODEMEDIC_PIP_ARGS is a list of arguments on purpose
"$work/venv/bin/pip" wheel --quiet --disable-pip-version-check --wheel-dir "$top/wheels" \
  ${NODEMEDIC_PIP_ARGS:-} "$work/src"
ls "$top/wheels"/nodemedic-*.whl >/dev/null 2>&1 || die "no nodemedic wheel was built"
install -D -m 0755 "$SOURCE/scripts/install.sh" "$top/scripts/install.sh"
install -D -m 0755 "$SOURCE/scripts/uninstall.sh" "$top/scripts/uninstall.sh"
install -D -m 0644 -t "$top/systemd" "$SOURCE"/systemd/*
install -D -m 0644 -t "$top/rules" "$SOURCE"/rules/*.yaml
install -D -m 0644 -t "$top/problems" "$SOURCE"/problems/*.yaml
install -D -m 0644 -t "$top/docs" "$SOURCE/docs/install.md"
install -m 0644 -t "$top" "$SOURCE/README.md" "$SOURCE/LICENSE"
printf '%s\n' "$PYVER" > "$top/wheels/PYTHON_VERSION"

mkdir -p "$OUT"
tarball="$OUT/$name-offline-py$PYVER-$ARCH.tar.gz"
tar -C "$work" --sort=name --owner=0 --group=0 --numeric-owner \
  --mtime="@$SOURCE_DATE_EPOCH" -cf - "$name" | gzip -9n > "$tarball"
echo "$tarball"
