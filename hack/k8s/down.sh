#!/usr/bin/env bash
# Stops what up.sh started (the nodes of node-up.sh first, then each component's whole process
# group) and removes $K8S_DIR (default <work tree>/.k8s): no process, port or file of the control
# plane is left behind.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${K8S_DIR:-$(cd "$here/../.." && pwd)/.k8s}"
# Nodes of node-up.sh first, while the API server can still delete their pods, the last one
# started first (cluster-up.sh starts nodemedic-node-1, -2, ... in turn; sort -V puts -10 after
# -9). What each node-up.sh found already there (netns-before, iptables-before) includes the
# nodes started before it, so only the first node's lists tell every node's leftovers apart: its
# node-down.sh must run last, when no other node runs (it sweeps network namespaces only then)
# and no other kubelet re-creates its KUBE-* chains. In name order the last-started node swept
# with lists already holding the other nodes' namespaces and chains: those were left behind.
mapfile -t nodes < <(find "$dir/nodes" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' \
  2>/dev/null | sort -rV)
for n in "${nodes[@]}"; do
  K8S_DIR="$dir" NODE_NAME="$n" bash "$here/node-down.sh"
done
if [ -f "$dir/pids" ]; then
  # Reverse order: scheduler and controller-manager, then the apiserver, etcd last.
  tac "$dir/pids" | while read -r name pid; do
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "k8s-down: stopped $name ($pid)" >&2
  done
fi
rm -rf "$dir"
