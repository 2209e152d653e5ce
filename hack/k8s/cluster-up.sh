#!/usr/bin/env bash
# `make cluster-up`: the control plane of up.sh, CLUSTER_NODES (default 2) real nodes of
# node-up.sh (the first with kube-proxy in iptables mode unless CLUSTER_KUBE_PROXY=0, the others
# with their own kubelet cgroupRoot, bridge and pod CIDR) and a nodemedic agent per node (its own
# process and port, --dry-run unless CLUSTER_DRY_RUN=0), then
# $K8S_DIR/cluster.json: {"image": ..., "nodes": [{"name", "nodemedic", "kubelet"}]}.
# CLUSTER_NSPAWN=1 (one node): the node is a booted systemd-nspawn container (node-up.sh
# NODE_NSPAWN=1) and the agent runs inside it as the transient unit nodemedic.service, so its
# restart-service restarts the node's real kubelet.service.
# `make cluster-down` (down.sh) stops the agents, the nodes and the control plane.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export K8S_DIR="${K8S_DIR:-$root/.k8s}"
nodemedic="${CLUSTER_NODEMEDIC:-$root/.venv/bin/nodemedic}"
[ -x "$nodemedic" ] || { echo "cluster-up: no $nodemedic (run 'make venv')" >&2; exit 1; }
kubeconfig="$(bash "$here/up.sh")"
# From here on any failing way out (a failed command, Ctrl-C, a timeout's TERM) stops what was
# started: down.sh stops the node(s) and the control plane.
cluster_ok=0
trap '[ "$cluster_ok" = 1 ] || bash "$here/down.sh" >&2' EXIT
trap 'exit 1' INT TERM
count="${CLUSTER_NODES:-2}"
nspawn="${CLUSTER_NSPAWN:-0}"
if [ "$nspawn" = 1 ] && [ "$count" != 1 ]; then
  echo "cluster-up: CLUSTER_NSPAWN=1 runs one node (a second nspawn node's cgroupRoot is not set up); CLUSTER_NODES=1" >&2
  count=1
fi
py="$(readlink -f "$nodemedic")"; py_base="$(dirname "$(dirname "$(readlink -f "$(dirname "$nodemedic")/python")")")"
dry=(--dry-run); [ "${CLUSTER_DRY_RUN:-1}" = 0 ] && dry=()
entries=()
for i in $(seq 1 "$count"); do
  # Node 1: the host's kubepods tree, kube-proxy, nmbr0, 10.244.1.0/24. Node i > 1: its own
  # cgroupRoot /nodemedic-node-i (its agent reads node-up.sh's view of it), bridge and CIDR.
  name="nodemedic-node-$i"
  node_env=(NODE_NAME="$name" NODE_NSPAWN="$nspawn"
    NODE_NSPAWN_BINDS_RO="$root $(dirname "$(dirname "$py")") $py_base")
  if [ "$i" = 1 ]; then
    node_env+=(NODE_KUBE_PROXY="${CLUSTER_KUBE_PROXY:-1}")
  else
    node_env+=(NODE_KUBE_PROXY=0 NODE_BRIDGE="nmbr$((i - 1))" NODE_POD_CIDR="10.244.$i.0/24"
      NODE_CGROUP_ROOT="/$name")
  fi
  read -r name kubelet < <(env "${node_env[@]}" bash "$here/node-up.sh" | tail -1) || exit 1
  nd="$K8S_DIR/nodes/$name"
  cgroupfs=/sys/fs/cgroup; [ -d "$nd/cgroupfs" ] && cgroupfs="$nd/cgroupfs"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  mkdir -p "$nd/nodemedic"
  agent=("$nodemedic" run --kubeconfig "$kubeconfig" --kubelet.url "$kubelet" --node-name "$name"
    --web.listen-address "127.0.0.1:$port" --state.dir "$nd/nodemedic" --path.cgroupfs "$cgroupfs"
    --rules.dir "$root/rules" --problems.dir "$root/problems" "${dry[@]}")
  if [ "$nspawn" = 1 ]; then
    # Inside the node container, under its systemd (stopped with the container by node-down.sh).
    nsenter -t "$(cat "$nd/nspawn-leader")" -m -u -i -p -C -- systemd-run --unit=nodemedic.service \
      --property="StandardOutput=append:$nd/logs/nodemedic.log" --property=StandardError=inherit \
      "${agent[@]}" >/dev/null
  else
    setsid "${agent[@]}" > "$nd/logs/nodemedic.log" 2>&1 < /dev/null &
    echo "nodemedic $!" >> "$nd/pids"
  fi
  url="http://127.0.0.1:$port"
  for _ in $(seq 1 60); do curl -sf --max-time 1 "$url/healthz" >/dev/null 2>&1 && break; sleep 0.5; done
  if ! curl -sf --max-time 1 "$url/healthz" >/dev/null 2>&1; then
    echo "cluster-up: the nodemedic agent of $name did not answer on $url/healthz within 30 s:" >&2
    tail -5 "$nd/logs/nodemedic.log" >&2; exit 1
  fi
  entries+=("$name" "$url" "$kubelet")
  echo "cluster-up: $name Ready, nodemedic on $url" >&2
done
python3 - "$K8S_DIR/cluster.json" "${entries[@]}" <<'PY'
import json, sys
out, rest = sys.argv[1], sys.argv[2:]
nodes = [{"name": rest[i], "nodemedic": rest[i + 1], "kubelet": rest[i + 2]}
         for i in range(0, len(rest), 3)]
json.dump({"image": "nodemedic.local/busybox:1", "kubeconfig": out.rsplit("/", 1)[0] + "/admin.kubeconfig",
           "nodes": nodes}, open(out, "w"), indent=2)
PY
echo "cluster-up: $K8S_DIR/cluster.json, kubeconfig $kubeconfig" >&2
cluster_ok=1
