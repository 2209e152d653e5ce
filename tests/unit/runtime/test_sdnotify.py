"""systemd notify datagrams, received on a real Unix socket as systemd would."""

from __future__ import annotations

import socket
from pathlib import Path

from agent.runtime.sdnotify import Notifier


def test_no_socket_means_silent_noop() -> None:
    """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
    n = Notifier(environ={})
    assert not n.enabled
    assert n.ready() is False


def test_ready_watchdog_stopping_reach_the_socket(tmp_path: Path) -> None:
    """READY=1 (with STATUS), WATCHDOG=1 and STOPPING=1 arrive as datagrams."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(path))
        srv.settimeout(2)
        n = Notifier(environ={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"})
        assert n.watchdog_seconds == 30.0
        assert n.ready("serving")
        assert srv.recv(4096) == b"READY=1\nSTATUS=serving"
        assert n.watchdog()
        assert srv.recv(4096) == b"WATCHDOG=1"
        assert n.stopping()
        assert srv.recv(4096) == b"STOPPING=1"


def test_abstract_namespace_socket() -> None:
    """An @-prefixed NOTIFY_SOCKET is the Linux abstract namespace."""
    name = f"nodemedic-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind("\0" + name)
        srv.settimeout(2)
        assert Notifier(environ={"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert srv.recv(64) == b"WATCHDOG=1"
