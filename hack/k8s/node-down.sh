#!/usr/bin/env bash
# Stops the node node-up.sh started ($NODE_NAME, default nodemedic-node-1, under $K8S_DIR) and
# leaves nothing behind (also the systemd-nspawn container of NODE_NSPAWN=1): its pods are deleted while the kubelet still runs (so containerd tears
# their sandboxes and network namespaces down itself), then kubelet, containers, shims and
# containerd are stopped, mounts under the node's directory unmounted, the CNI bridge and the
# kubepods cgroups it created removed, the Node object deleted and $K8S_DIR/nodes/<name> removed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${K8S_DIR:-$(cd "$here/../.." && pwd)/.k8s}"
name="${NODE_NAME:-nodemedic-node-1}"
nd="$dir/nodes/$name"
[ -d "$nd" ] || exit 0
BRIDGE="$(cat "$nd/bridge" 2>/dev/null || echo "${NODE_BRIDGE:-nmbr0}")"
cg_sub="$(cat "$nd/cgroup-root" 2>/dev/null || echo /)"; cg_sub="${cg_sub#/}"
bin="$(bash "$here/build.sh")"
sock="$nd/containerd/containerd.sock"
kc=("$bin/kubectl" --kubeconfig "$dir/admin.kubeconfig" --request-timeout 10s)
pid_of() { [ -f "$nd/pids" ] && awk -v n="$1" '$1 == n {print $2}' "$nd/pids"; }
stop_group() { # pid: TERM the process group, KILL after 5 s
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
}

# 0. The node's nodemedic agent (cluster-up.sh), so it does not act on a node going away.
stop_group "$(pid_of nodemedic)"

# 0b. NODE_NSPAWN=1 (nspawn.sh): pods, kubelet.service and containerd.service inside the node
#     container, then the container itself; the steps below find nothing more to stop.
# shellcheck source=hack/k8s/nspawn.sh
. "$here/nspawn.sh"
nspawn_down

# 1. Pods first, through the API, while the kubelet and containerd still run.
if [ -f "$dir/admin.kubeconfig" ] && kill -0 "$(pid_of kubelet)" 2>/dev/null; then
  "${kc[@]}" delete pods -A --field-selector "spec.nodeName=$name" --grace-period 0 --force \
    --wait=false >/dev/null 2>&1 || true
  for _ in $(seq 1 40); do
    [ -z "$(ctr --address "$sock" -n k8s.io tasks list -q 2>/dev/null)" ] && break; sleep 0.5
  done
fi
stop_group "$(pid_of kubelet)"

# 2. Whatever containers are left (the kubelet was gone or slow), then containerd and its shims.
if ctr --address "$sock" version >/dev/null 2>&1; then
  for t in $(ctr --address "$sock" -n k8s.io tasks list -q 2>/dev/null); do
    ctr --address "$sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
  done
  sleep 0.5
  for t in $(ctr --address "$sock" -n k8s.io tasks list -q 2>/dev/null); do
    ctr --address "$sock" -n k8s.io tasks delete -f "$t" >/dev/null 2>&1 || true
  done
fi
stop_group "$(pid_of containerd)"
# kube-proxy's rules (its own --cleanup), then every KUBE-* chain node-up did not find (the
# kubelet's KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT included).
if [ -n "$(pid_of kube-proxy)" ]; then
  stop_group "$(pid_of kube-proxy)"
  "$bin/kube-proxy" --cleanup --v 0 >> "$nd/logs/kube-proxy-cleanup.log" 2>&1
fi
[ -f "$nd/iptables-before" ] && python3 "$here/kube_chains.py" remove-new "$nd/iptables-before" 2>/dev/null
# Shims re-parent to init; ours are the ones started with our containerd's address.
for p in /proc/[0-9]*; do
  cmd="$(tr '\0' ' ' 2>/dev/null < "$p/cmdline")" || continue
  case "$cmd" in
    *containerd-shim-runc-v2*"-address $sock "*) kill -KILL "${p#/proc/}" 2>/dev/null || true ;;
  esac
done

# 3. Mounts under the node's directory (pod volumes, rootfs overlays, sandbox shm), deepest first;
#    network namespaces containerd made for our sandboxes.
for _ in 1 2 3; do
  mapfile -t mounts < <(awk -v d="$nd/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r)
  [ "${#mounts[@]}" -eq 0 ] && break
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
done
# Only while no other node runs: their sandboxes' namespaces are just as new.
others="$(find "$dir/nodes" -mindepth 2 -maxdepth 2 -name pids ! -path "$nd/pids" 2>/dev/null)"
if [ -f "$nd/netns-before" ] && [ -z "$others" ]; then
  for ns in /run/netns/cni-*; do
    [ -e "$ns" ] || continue
    grep -qxF "$ns" "$nd/netns-before" && continue
    umount "$ns" 2>/dev/null; rm -f "$ns"
  done
fi
ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE" 2>/dev/null

# 4. The kubepods cgroups under this node's cgroupRoot, if it created them (children before
#    parents), and the cgroupRoot itself if node-up made it.
if [ -f "$nd/created-kubepods" ]; then
  for h in /sys/fs/cgroup/*/; do
    h="${h%/}${cg_sub:+/$cg_sub}/kubepods"
    [ -d "$h" ] || continue
    find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
fi
if [ -f "$nd/created-cgroup-root" ]; then
  while read -r d; do rmdir "$d" 2>/dev/null; done < "$nd/created-cgroup-root"
fi

# 5. The Node object (the control plane may already be gone) and the directory.
[ -f "$dir/admin.kubeconfig" ] && "${kc[@]}" delete node "$name" --wait=false >/dev/null 2>&1
# --one-file-system: never through a mount that did not come off (pod volumes, netns).
rm -rf --one-file-system "$nd"
rmdir "$dir/nodes" 2>/dev/null
echo "node-down($name): stopped" >&2
exit 0
