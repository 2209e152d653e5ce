"""Builds a one-layer OCI image archive from Debian's static busybox, for a cluster that can pull
nothing: `ctr -n k8s.io images import` reads it (the name comes from the index annotations).

    python3 hack/k8s/oci_image.py OUT.tar REF [--add PATH=FILE ...] [ENTRYPOINT ...]

The layer holds /bin/busybox and a symlink per applet the tests use, plus the empty directories
a container's root needs, and each ``--add``ed static executable at PATH (node-up.sh adds
Kubernetes' own pause as /pause). Everything is deterministic (mtime 0, sorted), so the same
inputs give the same digest every time.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "sleep", "dd", "cat", "head", "tail", "tr", "true", "false", "echo", "ls",
           "wget", "nc", "ps", "env", "kill", "yes", "hostname", "mkdir", "rm")
DIRS = ("bin", "dev", "etc", "proc", "sys", "tmp", "var", "root")


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname, info.mtime = kind, mode, size, link, 0
    return info


def layer(extra: dict[str, Path]) -> bytes:
    """The uncompressed layer tar; ``extra`` maps a path in the image to a host executable."""
    data = BUSYBOX.read_bytes()
    if b"GLIBC" in data[:4096] or not data.startswith(b"\x7fELF"):
        raise SystemExit(f"oci_image: {BUSYBOX} is not a static ELF (install busybox-static)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in DIRS:
            tar.addfile(_info(d, tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755))
        tar.addfile(_info("bin/busybox", tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
        for a in APPLETS:
            tar.addfile(_info(f"bin/{a}", tarfile.SYMTYPE, 0o777, link="busybox"))
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        tar.addfile(_info("etc/passwd", tarfile.REGTYPE, 0o644, len(passwd)), io.BytesIO(passwd))
        for path, src in sorted(extra.items()):
            body = src.read_bytes()
            tar.addfile(_info(path.lstrip("/"), tarfile.REGTYPE, 0o755, len(body)),
                        io.BytesIO(body))
    return buf.getvalue()


def blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    tar.addfile(_info(f"blobs/sha256/{digest}", tarfile.REGTYPE, 0o644, len(data)),
                io.BytesIO(data))
    return f"sha256:{digest}"


def main(out: str, ref: str, entrypoint: list[str], extra: dict[str, Path]) -> None:
    lay = layer(extra)
    lay_digest = f"sha256:{hashlib.sha256(lay).hexdigest()}"
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Entrypoint": entrypoint or None,
                   "Cmd": None if entrypoint else ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [lay_digest]},
        "history": [{"created_by": f"hack/k8s/oci_image.py from {BUSYBOX}"}],
    }, sort_keys=True).encode()
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info("blobs", tarfile.DIRTYPE, 0o755))
        tar.addfile(_info("blobs/sha256", tarfile.DIRTYPE, 0o755))
        cfg_digest = blob(tar, config)
        blob(tar, lay)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": cfg_digest, "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": lay_digest, "size": len(lay)}],
        }, sort_keys=True).encode()
        man_digest = blob(tar, manifest)
        index = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": man_digest, "size": len(manifest),
                           "platform": {"architecture": "amd64", "os": "linux"},
                           "annotations": {"io.containerd.image.name": ref,
                                           "org.opencontainers.image.ref.name": ref}}],
        }, sort_keys=True).encode()
        layout = b'{"imageLayoutVersion": "1.0.0"}'
        tar.addfile(_info("oci-layout", tarfile.REGTYPE, 0o644, len(layout)), io.BytesIO(layout))
        tar.addfile(_info("index.json", tarfile.REGTYPE, 0o644, len(index)), io.BytesIO(index))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    rest, added = sys.argv[3:], {}
    while len(rest) >= 2 and rest[0] == "--add" and "=" in rest[1]:
        dest, _, src = rest[1].partition("=")
        added[dest] = Path(src)
        rest = rest[2:]
    main(sys.argv[1], sys.argv[2], rest, added)
