#!/usr/bin/env bash
# Stops what up.sh started (the nodes of node-up.sh first, then each component's whole process
# group) and removes $K8S_DIR (default <work tree>/.k8s): no process, port or file of the control
# plane is left behind.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${K8S_DIR:-$(cd "$here/../.." && pwd)/.k8s}"
# Nodes of node-up.sh first, while the API server can still delete their pods.
for n in "$dir"/nodes/*/; do
  if [ -d "$n" ]; then K8S_DIR="$dir" NODE_NAME="$(basename "$n")" bash "$here/node-down.sh"; fi
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
