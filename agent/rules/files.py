"""Reading rule files safely: regular files only, bounded in size, UTF-8; directory listing.

Every problem is a located :class:`agent.rules.located.Problem` at line 1 (field ``(file)``), so
a FIFO, a device, a broken symlink or a file swapped or grown while read is reported by name
instead of blocking or crashing the loader.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from .located import Problem

MAX_FILE_BYTES = 1 << 20
RULE_SUFFIXES = (".yaml", ".yml")


_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def file_problem(path: Path, message: str) -> Problem:
    return Problem(str(path), 1, 1, "(file)", message)


def read_text(path: Path) -> tuple[str | None, list[Problem]]:
    """Read one rule file: regular files only (checked on the open descriptor, so a file swapped
    for a FIFO or /dev/zero after listing is still refused), at most MAX_FILE_BYTES, UTF-8."""
    link = " (through a symlink)" if path.is_symlink() else ""
    try:
        mode = path.stat().st_mode  # before open(): opening a FIFO or a socket blocks or fails
    except FileNotFoundError:
        what = "broken symlink" if link else "file vanished before it could be read"
        return None, [file_problem(path, what)]
    except OSError as exc:
        return None, [file_problem(path, f"cannot read: {exc.strerror or exc}")]
    if not stat.S_ISREG(mode):
        return None, [file_problem(path, f"is {_kind(mode)}{link}, not a regular file")]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None, [file_problem(path, "file vanished before it could be read")]
    except OSError as exc:
        return None, [file_problem(path, f"cannot read: {exc.strerror or exc}")]
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped for something else since the stat()
            return None, [file_problem(path, f"is {_kind(st.st_mode)}{link}, not a regular "
                                        "file")]
        if st.st_size > MAX_FILE_BYTES:
            return None, [file_problem(path, f"file is {st.st_size} bytes, larger than the "
                                        f"limit of {MAX_FILE_BYTES} bytes")]
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:  # grew while we read it
            return None, [file_problem(path, f"file larger than the limit of {MAX_FILE_BYTES} "
                                        "bytes")]
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        return None, [file_problem(path, f"not UTF-8: {exc.reason}")]
    except FileNotFoundError:
        return None, [file_problem(path, "file vanished while it was read")]
    except OSError as exc:
        return None, [file_problem(path, f"cannot read: {exc.strerror or exc}")]
    finally:
        os.close(fd)


def rule_files(paths: Iterable[Path | str]) -> tuple[list[Path], list[Problem]]:
    """Expand directories to their *.yaml/*.yml entries (sorted, not recursive, no dotfiles).

    Every such entry is returned, whatever it is: :func:`read_text` refuses the ones that are not
    regular files (FIFOs, sockets, devices, directories, broken symlinks) with a named problem
    instead of skipping them silently."""
    files: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            try:
                entries = sorted(p.iterdir())
            except OSError as exc:
                problems.append(file_problem(p, f"cannot list: {exc.strerror or exc}"))
                continue
            files.extend(c for c in entries
                         if c.suffix in RULE_SUFFIXES and not c.name.startswith("."))
        elif p.exists() or p.is_symlink():
            files.append(p)
        else:
            problems.append(file_problem(p, "no such file or directory"))
    return files, problems
