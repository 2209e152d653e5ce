"""Give memory the agent freed back to the kernel after each tick (glibc ``malloc_trim``).

A tick allocates and frees a few MiB (the cgroup readings, the kubelet's /pods document, the
exposition). glibc keeps freed chunks of its main heap for reuse and returns only the top of it,
so a long-lived heap with a few survivors keeps its high-water mark as RSS. ``malloc_trim(0)``
releases every free page (madvise); about 0.2 ms of CPU per call at the agent's size. Called by
agent.runtime.daemon after the exposition is rendered. musl and other C libraries have no
``malloc_trim``: there :func:`trim` does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim in this process's own C library, or None (musl, static builds)."""
    try:
        fn = ctypes.CDLL(None).malloc_trim  # the allocator this process really uses
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def available() -> bool:
    """True when the C library can return freed heap (glibc)."""
    return _malloc_trim() is not None


def trim() -> bool:
    """Return free heap pages to the kernel; True if any were released. Blocks: run in a thread."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
