#!/usr/bin/env bash
# Builds the Kueue manager (sigs.k8s.io/kueue/cmd/kueue) pinned in versions.env from its Go module
# (hack/k8s/kueue/go.mod) into ~/.cache/nodemedic/k8s/kueue-<version>/, outside the work tree,
# once, and copies the module's CRDs (config/components/crd/bases) beside it.
# Prints the cache directory on stdout (bin/kueue, crd/*.yaml); a warm cache returns at once.
# NODEMEDIC_K8S_CACHE overrides the cache root.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=/dev/null
source "$here/versions.env"
cache="${NODEMEDIC_K8S_CACHE:-$HOME/.cache/nodemedic/k8s}/kueue-$KUEUE_VERSION"

ready() { [ -x "$cache/bin/kueue" ] && [ -f "$cache/.complete" ]; }
if ready; then echo "$cache"; exit 0; fi

command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "kueue-build: 'go' is not installed (needs Go >= 1.25; see docs/real-k8s.md)" >&2; exit 1; }
grep -q "sigs.k8s.io/kueue $KUEUE_VERSION" "$here/kueue/go.mod" || {
  echo "kueue-build: hack/k8s/kueue/go.mod does not require sigs.k8s.io/kueue $KUEUE_VERSION (run hack/k8s/kueue-gen-mod.sh)" >&2; exit 1; }
export GOFLAGS="-mod=mod -trimpath -buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0
mkdir -p "$cache/bin" "$cache/crd"
start=$(date +%s)
{
  echo "kueue-build: building Kueue $KUEUE_VERSION into $cache (first time only; ~4 min of 2 idle cores, 20 on busy ones)"
  cd "$here/kueue"
  go mod download sigs.k8s.io/kueue  # `go list -m` names the source only once it is downloaded
  src="$(go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)"
  [ -d "$src/config/components/crd/bases" ] || { echo "kueue-build: no CRDs in $src/config/components/crd/bases" >&2; exit 1; }
  go build -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" -o "$cache/bin/kueue" sigs.k8s.io/kueue/cmd/kueue
  install -m 0644 "$src"/config/components/crd/bases/*.yaml "$cache/crd/"
  touch "$cache/.complete"
  echo "kueue-build: done in $(( $(date +%s) - start )) s"
} >&2
echo "$cache"
