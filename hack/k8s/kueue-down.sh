#!/usr/bin/env bash
# Undoes kueue-up.sh: deletes every Kueue object while the manager still runs (it removes its own
# finalizers), stops the manager's process group, deletes the CRDs and the kueue-system namespace
# and removes $KUEUE_DIR. Safe to run twice, or after the control plane is gone.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
k8s_dir="${K8S_DIR:-$root/.k8s}"
kubeconfig="${KUBECONFIG:-$k8s_dir/admin.kubeconfig}"
dir="${KUEUE_DIR:-$k8s_dir/kueue}"
kbin="$(bash "$here/build.sh")"
kubectl() { timeout 60 "$kbin/kubectl" --kubeconfig "$kubeconfig" --request-timeout=20s "$@"; }
kinds=(workloads localqueues clusterqueues resourceflavors topologies admissionchecks cohorts
       workloadpriorityclasses provisioningrequestconfigs multikueueclusters multikueueconfigs)
live=0; [ -f "$kubeconfig" ] && kubectl get --raw /readyz >/dev/null 2>&1 && live=1
if [ "$live" = 1 ]; then
  for k in "${kinds[@]}"; do
    kubectl delete "$k.kueue.x-k8s.io" --all --all-namespaces --wait=false >/dev/null 2>&1 || true
  done
  sleep 1
fi
if [ -f "$dir/pid" ]; then
  pid="$(cat "$dir/pid")"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  echo "kueue-down: stopped the Kueue manager ($pid)" >&2
fi
if [ "$live" = 1 ]; then
  # With the manager gone, finalizers it did not get to remove would hold the CRDs forever.
  for k in "${kinds[@]}"; do
    kubectl get "$k.kueue.x-k8s.io" --all-namespaces \
      -o jsonpath='{range .items[*]}{.metadata.namespace}{" "}{.metadata.name}{"\n"}{end}' 2>/dev/null |
    while read -r ns name; do
      [ -n "$name" ] || { name=$ns; ns=""; }
      kubectl patch ${ns:+-n "$ns"} "$k.kueue.x-k8s.io" "$name" --type merge \
        -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
    done
  done
  crds="$(kubectl get crd -o name 2>/dev/null | grep '\.kueue\.x-k8s\.io$' || true)"
  # shellcheck disable=SC2086  # one word per CRD
  [ -z "$crds" ] || kubectl delete --wait=true --timeout=60s $crds >/dev/null 2>&1 || true
  kubectl delete namespace kueue-system --ignore-not-found --wait=false >/dev/null 2>&1 || true
fi
rm -rf "$dir"
