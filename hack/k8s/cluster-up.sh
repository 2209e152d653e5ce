#!/usr/bin/env bash
# `make cluster-up`: the control plane of up.sh, one real node of node-up.sh (with kube-proxy in
# iptables mode unless CLUSTER_KUBE_PROXY=0) and a nodemedic agent for that node (its own process
# and port, --dry-run unless CLUSTER_DRY_RUN=0), then
# $K8S_DIR/cluster.json: {"image": ..., "nodes": [{"name", "nodemedic", "kubelet"}]}.
# CLUSTER_NSPAWN=1: the node is a booted systemd-nspawn container (node-up.sh NODE_NSPAWN=1) and
# the agent runs inside it as the transient unit nodemedic.service, so its restart-service
# restarts the node's real kubelet.service.
# `make cluster-down` (down.sh) stops the agent, the node and the control plane.
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
name="${NODE_NAME:-nodemedic-node-1}"
nspawn="${CLUSTER_NSPAWN:-0}"
py="$(readlink -f "$nodemedic")"; py_base="$(dirname "$(dirname "$(readlink -f "$(dirname "$nodemedic")/python")")")"
read -r name kubelet < <(NODE_NAME="$name" NODE_KUBE_PROXY="${CLUSTER_KUBE_PROXY:-1}" \
  NODE_NSPAWN="$nspawn" NODE_NSPAWN_BINDS_RO="$root $(dirname "$(dirname "$py")") $py_base" \
  bash "$here/node-up.sh" | tail -1) || exit 1
nd="$K8S_DIR/nodes/$name"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
dry=(--dry-run); [ "${CLUSTER_DRY_RUN:-1}" = 0 ] && dry=()
mkdir -p "$nd/nodemedic"
agent=("$nodemedic" run --kubeconfig "$kubeconfig" --kubelet.url "$kubelet" --node-name "$name"
  --web.listen-address "127.0.0.1:$port" --state.dir "$nd/nodemedic"
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
python3 - "$K8S_DIR/cluster.json" "$name" "$url" "$kubelet" <<'PY'
import json, sys
out, name, url, kubelet = sys.argv[1:]
json.dump({"image": "nodemedic.local/busybox:1", "kubeconfig": out.rsplit("/", 1)[0] + "/admin.kubeconfig",
           "nodes": [{"name": name, "nodemedic": url, "kubelet": kubelet}]},
          open(out, "w"), indent=2)
PY
echo "cluster-up: $name Ready, nodemedic on $url; $K8S_DIR/cluster.json, kubeconfig $kubeconfig" >&2
cluster_ok=1
