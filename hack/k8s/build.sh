#!/usr/bin/env bash
# Builds the pinned etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet
# and kube-proxy from their Go modules into ~/.cache/nodemedic/k8s/<versions>/bin (outside the work
# tree), once.
# Prints the bin directory on stdout; a warm cache returns at once. NODEMEDIC_K8S_CACHE overrides
# the cache root.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=/dev/null
source "$here/versions.env"
cache="${NODEMEDIC_K8S_CACHE:-$HOME/.cache/nodemedic/k8s}/$KUBE_VERSION-etcd-$ETCD_VERSION"
bin="$cache/bin"
kube_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
all=(etcd "${kube_cmds[@]}")

ready() { for b in "${all[@]}"; do [ -x "$bin/$b" ] || return 1; done; [ -f "$bin/.complete" ]; }
if ready; then echo "$bin"; exit 0; fi

# The official Go tarball's place, for shells whose PATH lacks it (CI runners, sudo).
command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "k8s-build: 'go' is not installed (needs Go >= 1.25; see docs/real-k8s.md)" >&2; exit 1; }
mkdir -p "$bin"
export GOFLAGS="-mod=mod -trimpath -buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0
start=$(date +%s)
{
  echo "k8s-build: building etcd $ETCD_VERSION and Kubernetes $KUBE_VERSION into $bin (first time only; ~10-45 min on 2 cores)"
  (cd "$here/etcd" && go build -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
  kv="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitTreeState=clean"
  kv="$kv -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
  pkgs=(); for c in "${kube_cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  (cd "$here/kube" && go build -ldflags "-s -w $kv" -o "$bin/" "${pkgs[@]}")
  touch "$bin/.complete"
  echo "k8s-build: done in $(( $(date +%s) - start )) s"
} >&2
echo "$bin"
