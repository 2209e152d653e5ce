"""The OpenAPI documents of the in-memory API server: /openapi/v2 and /openapi/v3.

Serves the real kube-apiserver's documents (captured from v1.35.4 and filtered down to the
resources in nodemedic_sim.apiserver.resources by hack/k8s/capture-openapi.sh; provenance in
openapi/SOURCES next to this module) the way kube-apiserver does, so kubectl validates, applies
and explains against this server as against a real one:

* ``/openapi/v2``: JSON, or protobuf when the client asks for
  ``application/com.github.proto-openapi.spec.v2@v1.0+protobuf`` first (client-go's
  ``OpenAPISchema`` only asks for protobuf);
* ``/openapi/v3``: the index, ``{"paths": {"api/v1": {"serverRelativeURL":
  "/openapi/v3/api/v1?hash=..."}}}``, the hash being the SHA-512 of the document's bytes;
* ``/openapi/v3/<path>``: one document as JSON; with the current ``hash`` it is immutable
  (``Cache-Control: public, immutable``, which kubectl's disk cache relies on), with a stale hash
  a 301 to the current URL. The v3 protobuf form is not captured: asking only for it gets a 406.

Also gives nodemedic_sim.apiserver.fieldvalidation the schema of each served kind.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import time
from dataclasses import dataclass
from email.utils import formatdate
from importlib import resources
from typing import Any

from aiohttp import web

from nodemedic_sim.apiserver import status as st
from nodemedic_sim.apiserver.resources import ResourceType

_V2_PB = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
# kube-apiserver answers with this spelling (a "." where the request had "@").
_V2_PB_REPLY = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
_YEAR = 365 * 24 * 3600


@dataclass(frozen=True)
class _Doc:
    body: bytes
    hash: str  # upper-case hex SHA-512 of body, as kube-apiserver computes it

    @classmethod
    def of(cls, body: bytes) -> _Doc:
        return cls(body, hashlib.sha512(body).hexdigest().upper())


def _read(*parts: str) -> bytes:
    node = resources.files("nodemedic_sim.apiserver").joinpath("openapi", *parts)
    return gzip.decompress(node.read_bytes())


@functools.cache
def _v2() -> tuple[_Doc, _Doc]:
    """(JSON, protobuf) of /openapi/v2."""
    return _Doc.of(_read("v2.json.gz")), _Doc.of(_read("v2.pb.gz"))


@functools.cache
def _v3() -> dict[str, _Doc]:
    """Index path (``api/v1``) -> document, for every captured v3 document."""
    folder = resources.files("nodemedic_sim.apiserver").joinpath("openapi", "v3")
    docs = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".json.gz"):
            name = entry.name.removesuffix(".json.gz").replace("_", "/")
            docs[name] = _Doc.of(gzip.decompress(entry.read_bytes()))
    return dict(sorted(docs.items()))


def v3_document(name: str) -> dict[str, Any]:
    """The parsed v3 document at index path ``name`` (``api/v1``, ``apis/apps/v1``...)."""
    return _parsed(name)


@functools.cache
def _parsed(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_v3()[name].body)
    return doc


@functools.cache
def _schemas_by_kind(name: str) -> dict[tuple[str, str, str], str]:
    out: dict[tuple[str, str, str], str] = {}
    for key, schema in _parsed(name)["components"]["schemas"].items():
        for gvk in schema.get("x-kubernetes-group-version-kind", ()):
            out.setdefault((gvk["group"], gvk["version"], gvk["kind"]), key)
    return out


def schema_for(rt: ResourceType) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the kind's schema, its document's ``components.schemas``) for resource ``rt``."""
    name = f"apis/{rt.group}/{rt.version}" if rt.group else f"api/{rt.version}"
    key = _schemas_by_kind(name).get((rt.group, rt.version, rt.kind)) if name in _v3() else None
    if key is None:  # a resource added to resources.py without recapturing the documents
        raise st.ApiError(
            500, "InternalError",
            f"no OpenAPI schema for {rt.kind} {rt.api_version}: run hack/k8s/capture-openapi.sh",
        )
    schemas: dict[str, Any] = _parsed(name)["components"]["schemas"]
    return schemas[key], schemas


def _index() -> bytes:
    paths = {
        name: {"serverRelativeURL": f"/openapi/v3/{name}?hash={doc.hash}"}
        for name, doc in _v3().items()
    }
    return json.dumps({"paths": paths}, separators=(",", ":")).encode()


def _accepts(accept: str) -> list[str]:
    """The media types of an Accept header, in the client's order (parameters dropped)."""
    return [part.split(";")[0].strip() for part in accept.split(",") if part.strip()]


def _wants_pb(accept: str) -> bool:
    for media in _accepts(accept):
        if media == _V2_PB:
            return True
        if media in ("application/json", "application/*", "*/*"):
            return False
    return False


def _not_acceptable() -> web.Response:
    return web.Response(
        status=406, text="only application/json is served", content_type="text/plain"
    )


def _send(request: web.Request, doc: _Doc, content_type: str, immutable: bool) -> web.Response:
    headers = {"ETag": f'"{doc.hash}"', "Vary": "Accept"}
    if immutable:
        headers["Cache-Control"] = "public, immutable"
        headers["Expires"] = formatdate(time.time() + _YEAR, usegmt=True)
    else:
        headers["Cache-Control"] = "no-cache, private"
    if request.headers.get("If-None-Match") == headers["ETag"]:
        return web.Response(status=304, headers=headers)
    resp = web.Response(body=doc.body, headers=headers)
    resp.content_type = content_type
    return resp


def serve(request: web.Request) -> web.Response | None:
    """The answer to a GET under /openapi, or None when the path is not an OpenAPI one."""
    path = request.path.rstrip("/")
    if path == "/openapi/v2":
        json_doc, pb_doc = _v2()
        if _wants_pb(request.headers.get("Accept", "")):
            return _send(request, pb_doc, _V2_PB_REPLY, immutable=False)
        return _send(request, json_doc, "application/json", immutable=False)
    if path == "/openapi/v3":
        return web.Response(body=_index(), content_type="text/plain", charset="utf-8")
    if not path.startswith("/openapi/v3/"):
        return None
    name = path.removeprefix("/openapi/v3/")
    doc = _v3().get(name)
    if doc is None:
        return None
    accept = _accepts(request.headers.get("Accept", ""))
    if accept and not {"application/json", "application/*", "*/*"} & set(accept):
        return _not_acceptable()
    wanted = request.query.get("hash")
    if wanted is not None and wanted != doc.hash:
        location = f"/openapi/v3/{name}?hash={doc.hash}"
        return web.Response(
            status=301,
            headers={"Location": location, "ETag": f'"{doc.hash}"', "Vary": "Accept"},
            content_type="application/json",
        )
    return _send(request, doc, "application/json", immutable=wanted is not None)
