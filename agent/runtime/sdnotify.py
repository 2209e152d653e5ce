"""systemd notify protocol (sd_notify(3)): READY=1, WATCHDOG=1, STOPPING=1, STATUS=...

Used by agent.runtime.daemon. A no-op unless systemd set NOTIFY_SOCKET. Written here instead of
depending on python-systemd (needs libsystemd headers to build) or the unmaintained `sdnotify`
package: the protocol is one datagram on a Unix socket.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends notifications to $NOTIFY_SOCKET; silently does nothing when it is unset."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        # A leading "@" means the Linux abstract namespace (a NUL byte on the wire).
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_seconds = int(usec) / 1e6 if usec.isdigit() else None

    @property
    def enabled(self) -> bool:
        return bool(self._addr)

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (e.g. "READY=1") in one datagram; False when not under systemd/failed."""
        if not self._addr:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self._addr)
                s.sendall("\n".join(fields).encode())
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")
