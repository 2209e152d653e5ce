#!/usr/bin/env bash
# Regenerates sim/nodemedic_sim/apiserver/openapi/ (the OpenAPI v2 and v3 documents the in-memory API
# server serves) from a running real kube-apiserver at the pinned version:
#   KUBECONFIG=$(bash hack/k8s/up.sh) bash hack/k8s/capture-openapi.sh; bash hack/k8s/down.sh
# openapi_filter.py fetches and filters the JSON documents (kubectl get --raw); the protobuf form
# of v2 is made from the filtered JSON by openapi-pb (gnostic's ParseDocument + proto.Marshal,
# the conversion kube-apiserver itself does: on the unfiltered document the bytes are identical).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/sim/nodemedic_sim/apiserver/openapi"
# shellcheck source=/dev/null
source "$here/versions.env"
bin="$(bash "$here/build.sh")"
: "${KUBECONFIG:?set KUBECONFIG to the admin kubeconfig of the real server (printed by up.sh)}"
server="$("$bin/kubectl" version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"
[ "$server" = "$KUBE_VERSION" ] || { echo "capture-openapi: server is $server, want $KUBE_VERSION" >&2; exit 1; }
"${PYTHON:-$root/.venv/bin/python}" "$here/openapi_filter.py" --kubectl "$bin/kubectl" --out "$out"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
(cd "$here/openapi-pb" && GOFLAGS="-mod=mod -trimpath -buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0 \
  go build -o "$tmp/openapi-pb" .)
gzip -dc "$out/v2.json.gz" | "$tmp/openapi-pb" | gzip -9n > "$out/v2.pb.gz"
cat > "$out/SOURCES" <<SRC
OpenAPI documents served by the in-memory API server (sim/nodemedic_sim/apiserver/openapi.py).

Source: a real kube-apiserver $server (hack/k8s/up.sh, built by hack/k8s/build.sh from the
k8s.io/kubernetes module at KUBE_VERSION in versions.env), captured on $(date -u +%Y-%m-%d) by
hack/k8s/capture-openapi.sh with:
  kubectl get --raw /openapi/v2
  kubectl get --raw /openapi/v3            (the index: which URL serves each group-version)
  kubectl get --raw /openapi/v3/<path>     for api, apis, version, apis/<group> and each served
                                           group-version (api/v1, apis/<group>/<version>)
Filtering (hack/k8s/openapi_filter.py): in v2.json.gz and each group-version's v3 document only
the paths of the resources in sim/nodemedic_sim/apiserver/resources.py RESOURCES are kept (collection,
object, watch, and the subresources each declares; other subresources such as pods/log, pods/exec
or nodes/proxy are dropped), plus the group-version root path; then only the definitions
(v2) / components (v3) those paths reference, transitively. Kept entries are the real JSON values,
unchanged. api, apis, version and apis/<group> documents are kept whole.
v2.pb.gz is v2.json.gz converted by hack/k8s/openapi-pb (what kube-apiserver serves for
Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf).
Files are gzip -9 without timestamps; the served bytes are the decompressed files and the v3 hash
is their SHA-512, as kube-apiserver computes it.
SRC
ls -l "$out" "$out/v3" >&2
