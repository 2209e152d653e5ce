#!/usr/bin/env bash
# Build dist/nodemedic_<version>_<arch>.deb: a self-contained package. The virtual environment
# with nodemedic and every dependency is built here (PyPI or the pip cache) against Debian's
# /usr/bin/python3 of this machine's release and installed as /opt/nodemedic/venv; the node
# needs no network. Called by `make deb`; tests/system builds it the same way.
#
# Usage: packaging/build-deb.sh [--out DIR] [--version VERSION]
#   --out DIR          where the .deb goes (default: dist/ in the checkout)
#   --version VERSION  Debian version (default: pyproject's version); tests build an "upgrade"
# Environment: PYTHON (default /usr/bin/python3: the target release's interpreter),
#   NODEMEDIC_PIP_ARGS (extra pip arguments, e.g. an index mirror), SOURCE_DATE_EPOCH.
set -euo pipefail

SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$SOURCE/dist"
VERSION=""
PYTHON="${PYTHON:-/usr/bin/python3}"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    *) echo "build-deb.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
die() { echo "build-deb.sh: error: $*" >&2; exit 1; }
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (apt-get install dpkg)"

PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
PYBIN="/usr/bin/python$PYVER"
[ -x "$PYBIN" ] || die "$PYTHON is not Debian's interpreter ($PYBIN is missing)"
"$PYBIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python $PYVER < 3.11"
"$PYBIN" -c 'import venv, ensurepip' 2>/dev/null || die "python$PYVER-venv is missing"
if [ -z "$VERSION" ]; then
  VERSION="$("$PYBIN" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$SOURCE/pyproject.toml")"
fi
ARCH="$(dpkg --print-architecture)"
NEXT="${PYVER%.*}.$(( ${PYVER#*.} + 1 ))"
DEPENDS="python3 (>= $PYVER), python3 (<< $NEXT), python$PYVER, libc6 (>= 2.28)"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$SOURCE" log -1 --format=%ct 2>/dev/null || date +%s)}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pkg="$work/pkg"
venv="$pkg/opt/nodemedic/venv"

# 1. The venv, built in place under the staging root, then made to name its final path.
"$PYBIN" -m venv "$venv"
src="$work/src"
mkdir "$src"
members=(pyproject.toml agent)
for f in README.md LICENSE; do [ -e "$SOURCE/$f" ] && members+=("$f"); done
tar -C "$SOURCE" --exclude=__pycache__ -cf - "${members[@]}" | tar -C "$src" -xf -
# shellcheck disable=SC2086 # NODEMEDIC_PIP_ARGS is a list of arguments on purpose
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile \
  ${NODEMEDIC_PIP_ARGS:-} "$src"
"$venv/bin/python" -m pip uninstall --quiet --yes pip setuptools >/dev/null 2>&1 || true
rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1 "$venv"/bin/pip*
# The wheels' extension modules carry symbols; their vendored *.libs (patched by auditwheel)
# are left alone. Upstream files marked executable that are not programs lose the bit.
find "$venv/lib" \( -name '*.cpython-*.so' -o -name '*.abi3.so' \) -exec strip --strip-unneeded {} +
find "$venv/lib" -type f -perm /111 ! -name '*.so*' -exec chmod a-x {} +
grep -rlI --null "$venv" "$venv" | xargs -0r sed -i "s#$venv#/opt/nodemedic/venv#g"
rm -f "$venv"/lib/python*/site-packages/nodemedic-*.dist-info/direct_url.json
if grep -rlI "$work" "$venv"; then die "the venv still names the build directory"; fi
find "$venv" -name __pycache__ -prune -exec rm -rf {} +
"$venv/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash \
  -s "$pkg" -p / "$venv/lib" >/dev/null
[ "$(readlink "$venv/bin/python")" = "$PYBIN" ] || ln -sf "$PYBIN" "$venv/bin/python"

# 2. Unit, configuration (conffiles), documentation.
install -D -m 0644 "$SOURCE/systemd/nodemedic.service" "$pkg/lib/systemd/system/nodemedic.service"
install -d -m 0750 "$pkg/etc/nodemedic" "$pkg/etc/nodemedic/rules" "$pkg/etc/nodemedic/problems"
install -m 0640 "$SOURCE/systemd/config.yaml" "$SOURCE/systemd/nodemedic.env" "$pkg/etc/nodemedic/"
install -m 0640 "$SOURCE"/rules/*.yaml "$pkg/etc/nodemedic/rules/"
install -m 0640 "$SOURCE"/problems/*.yaml "$pkg/etc/nodemedic/problems/"  # --problems.dir
doc="$pkg/usr/share/doc/nodemedic"
install -D -m 0644 "$SOURCE/packaging/debian/copyright" "$doc/copyright"
install -D -m 0644 "$SOURCE/packaging/debian/lintian-overrides" \
  "$pkg/usr/share/lintian/overrides/nodemedic"
date_r="$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
printf 'nodemedic (%s) unstable; urgency=medium\n\n  * Release %s; see CHANGELOG.md upstream\n\n -- nodemedic developers <maintainers@nodemedic.invalid>  %s\n' \
  "$VERSION" "$VERSION" "$date_r" | gzip -9n > "$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"

# 3. Control files.
install -d -m 0755 "$pkg/DEBIAN"
for s in postinst prerm postrm; do
  install -m 0755 "$SOURCE/packaging/debian/$s" "$pkg/DEBIAN/$s"
done
(cd "$pkg" && find etc -type f | sort | sed 's#^#/#') > "$pkg/DEBIAN/conffiles"
size="$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)"
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$size/" \
    -e "s/@DEPENDS@/$DEPENDS/" "$SOURCE/packaging/debian/control.in" > "$pkg/DEBIAN/control"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -print0 | sort -z \
  | xargs -0 md5sum | sed 's#  \./#  #') > "$pkg/DEBIAN/md5sums"
find "$pkg" -type d -exec chmod g-w,o-w {} +
find "$pkg" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$OUT"
deb="$OUT/nodemedic_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
