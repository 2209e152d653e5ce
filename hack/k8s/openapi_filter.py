"""Filters a real kube-apiserver's OpenAPI documents down to what the in-memory server serves.

Used by hack/k8s/capture-openapi.sh. Reads the documents a real server returned for
``/openapi/v2`` and ``/openapi/v3/<group-version>`` through ``kubectl get --raw`` (run here, argv
only), keeps the paths of the resources in nodemedic_sim.apiserver.resources.RESOURCES (and of the
subresources each one declares) plus each group-version's root path, then keeps every
definition / component the kept paths reference, transitively. Nothing is edited or added: every
kept entry is the real server's JSON value, unchanged (written compact in the original key order,
as kube-apiserver writes it: an unfiltered document comes out byte-identical). Writes gzip files
into the output dir: ``v2.json.gz`` and ``v3/<path with / as _>.json.gz`` (capture-openapi.sh
makes the ``v2.pb.gz`` protobuf from ``v2.json.gz``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from nodemedic_sim.apiserver.resources import RESOURCES

# The v3 index entries the in-memory server also serves (its /api, /apis, group and version docs).
_V3_ROOTS = ("api", "apis", "version")


def _served(prefix: str, path: str) -> bool:
    """Whether ``path`` (under /api/v1 or /apis/<g>/<v>) is one the in-memory server serves."""
    if not path.startswith(prefix + "/"):
        return False
    group, version = _group_version(prefix)
    rest = path[len(prefix) + 1 :].rstrip("/").split("/")
    if rest == [""]:
        return True  # the group-version's resource list
    if rest[0] == "watch":
        rest = rest[1:]
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[1] == "{namespace}":
        rest = rest[2:]
    for r in RESOURCES:
        if (r.group, r.version, r.plural) != (group, version, rest[0]):
            continue
        if len(rest) <= 2:
            return True
        return len(rest) == 3 and rest[2] in r.subresources
    return False


def _group_version(prefix: str) -> tuple[str, str]:
    parts = prefix.strip("/").split("/")
    return ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])


def _refs(value: Any, out: set[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "$ref" and isinstance(v, str):
                out.add(v)
            else:
                _refs(v, out)
    elif isinstance(value, list):
        for v in value:
            _refs(v, out)


def _pointer(doc: dict[str, Any], ref: str) -> tuple[str, ...]:
    if not ref.startswith("#/"):
        raise ValueError(f"external $ref {ref!r} is not supported")
    parts = tuple(p.replace("~1", "/").replace("~0", "~") for p in ref[2:].split("/"))
    node: Any = doc
    for p in parts:
        node = node[p]  # KeyError: the real document references something it lacks
    return parts


def filter_doc(doc: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """``doc`` with only the served paths under ``prefixes`` and what they reference."""
    paths = {p: v for p, v in doc["paths"].items() if any(_served(x, p) for x in prefixes)}
    wanted: set[tuple[str, ...]] = set()
    todo: set[str] = set()
    _refs(paths, todo)
    while todo:
        parts = _pointer(doc, todo.pop())
        entry = parts[:3] if parts[0] == "components" else parts[:2]
        if entry in wanted:
            continue
        wanted.add(entry)
        node: Any = doc
        for p in entry:
            node = node[p]
        _refs(node, todo)
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key == "paths":
            out[key] = paths
        elif key in ("definitions", "parameters", "responses"):
            out[key] = {k: v for k, v in value.items() if (key, k) in wanted}
        elif key == "components":
            out[key] = {  # securitySchemes are named by "security", not by a $ref: kept
                sec: {k: v for k, v in entries.items() if ("components", sec, k) in wanted}
                if sec != "securitySchemes"
                else entries
                for sec, entries in value.items()
            }
        else:
            out[key] = value
    return out


def _get(kubectl: str, path: str) -> dict[str, Any]:
    raw = subprocess.run([kubectl, "get", "--raw", path], check=True, capture_output=True).stdout
    doc: dict[str, Any] = json.loads(raw)
    return doc


def _write(path: Path, doc: dict[str, Any]) -> int:
    # Compact, key order kept: the same bytes kube-apiserver serves (its hash is their sha512).
    data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    return len(data)


def main() -> None:
    """Fetch, filter and write the documents."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubectl", required=True, help="kubectl at the server's version")
    ap.add_argument("--out", required=True, type=Path, help="sim/nodemedic_sim/apiserver/openapi")
    args = ap.parse_args()
    gvs = sorted({(r.group, r.version) for r in RESOURCES})
    prefixes = tuple(f"/apis/{g}/{v}" if g else f"/api/{v}" for g, v in gvs)
    for old in args.out.glob("v3/*.json.gz"):
        old.unlink()
    size = _write(args.out / "v2.json.gz", filter_doc(_get(args.kubectl, "/openapi/v2"), prefixes))
    print(f"v2: {size} bytes", file=sys.stderr)
    index = _get(args.kubectl, "/openapi/v3")["paths"]
    groups = {g for g, _ in gvs if g}
    names = [*_V3_ROOTS, *(f"apis/{g}" for g in sorted(groups)), *(p.strip("/") for p in prefixes)]
    for name in names:
        url = index[name]["serverRelativeURL"].split("?")[0]
        doc = _get(args.kubectl, url)
        if f"/{name}" in prefixes:
            doc = filter_doc(doc, (f"/{name}",))
        size = _write(args.out / "v3" / (name.replace("/", "_") + ".json.gz"), doc)
        print(f"v3 {name}: {size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
