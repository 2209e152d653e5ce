"""``nodemedic apiserver``: serve the in-memory Kubernetes API server standalone.

Registered by agent.cli through :func:`add_parser`. Lets people try rules and actions locally with
kubectl: ``nodemedic apiserver --listen 127.0.0.1:6443 --kubeconfig-out kc --seed objs.yaml``, then
``kubectl --kubeconfig kc get nodes``. The server has no authentication, so it only listens on
loopback addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from nodemedic_sim.apiserver import ApiError, ApiServer


def add_parser(subparsers: Any) -> None:
    """Add the ``apiserver`` subcommand to the ``nodemedic`` parser."""
    p = subparsers.add_parser(
        "apiserver",
        help="serve an in-memory Kubernetes API server (tests, demo, kubectl experiments)",
        description="Serve an in-memory Kubernetes API server on loopback until interrupted. "
        "State lives in memory only.",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="loopback address and port (port 0 = any free port; default %(default)s)",
    )
    p.add_argument(
        "--kubeconfig-out",
        type=Path,
        metavar="FILE",
        help="write a kubeconfig for this server to FILE",
    )
    p.add_argument(
        "--seed",
        type=Path,
        metavar="FILE",
        help="YAML or JSON objects to create at start: a list, a v1 List, or "
        "several YAML documents",
    )
    p.set_defaults(func=run)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen={text!r}: must be HOST:PORT")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(
            f"--listen={text!r}: the test API server has no authentication; use a loopback "
            "address such as 127.0.0.1"
        )
    return host, int(port)


def load_seed(path: Path) -> list[Any]:
    """Objects from a seed file (raises ValueError with file:problem on unreadable input)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML/JSON: {exc}") from exc
    objs: list[Any] = []
    for d in docs:
        if isinstance(d, list):
            objs.extend(d)
        elif isinstance(d, dict) and isinstance(d.get("items"), list):
            objs.extend(d["items"])
        else:
            objs.append(d)
    return objs


def seed(server: ApiServer, objs: list[Any]) -> tuple[int, list[str]]:
    """Create ``objs`` in order; returns (created, one message per skipped object)."""
    created, problems = 0, []
    for i, raw in enumerate(objs):
        where = f"object {i + 1}"
        if not isinstance(raw, dict):
            problems.append(f"{where}: not a mapping, skipped")
            continue
        where += f" ({raw.get('kind', '?')} {(raw.get('metadata') or {}).get('name', '?')})"
        obj = dict(raw)
        meta = obj.get("metadata")
        if isinstance(meta, dict):  # exported objects carry server-managed fields: drop them
            obj["metadata"] = {k: v for k, v in meta.items() if k not in ("resourceVersion", "uid")}
        try:
            server.create(obj)
            created += 1
        except KeyError as exc:
            problems.append(f"{where}: {exc.args[0]}, skipped")
        except ApiError as exc:
            problems.append(f"{where}: {exc.message}, skipped")
    return created, problems


async def _serve(args: argparse.Namespace, host: str, port: int, objs: list[Any]) -> int:
    server = ApiServer(host, port)
    created, problems = seed(server, objs)
    for p in problems:
        print(f"nodemedic apiserver: seed: {p}", file=sys.stderr)
    await server.start()
    try:
        if args.kubeconfig_out is not None:
            server.write_kubeconfig(args.kubeconfig_out)
        print(
            json.dumps(
                {
                    "url": server.url,
                    "kubeconfig": str(args.kubeconfig_out or ""),
                    "seeded": created,
                    "skipped": len(problems),
                }
            ),
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await server.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    """Handler of ``nodemedic apiserver``; returns the exit code."""
    try:
        host, port = _listen(args.listen)
        objs = load_seed(args.seed) if args.seed is not None else []
    except ValueError as exc:
        print(f"nodemedic apiserver: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args, host, port, objs))
    except OSError as exc:
        print(
            f"nodemedic apiserver: cannot listen on {args.listen}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1


def main(argv: list[str] | None = None) -> int:
    """``python -m nodemedic_sim.apiserver.command [--listen ...]``: ``nodemedic apiserver``."""
    parser = argparse.ArgumentParser(prog="nodemedic")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["apiserver", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
