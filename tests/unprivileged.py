"""Run a piece of a test as user nobody, so file modes really apply (root reads everything).

``as_nobody(work)`` forks; the child drops root (groups, gid and uid 65534), calls ``work()`` and
sends its JSON-able result back through a pipe; the parent returns it. An exception in the child
is raised in the parent with the child's traceback, instead of an empty answer.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from typing import Any

NOBODY = 65534


def as_nobody(work: Callable[[], Any]) -> Any:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            answer = {"result": work()}
        except BaseException:
            answer = {"error": traceback.format_exc()}
        try:
            os.write(w, json.dumps(answer).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    answer = json.loads(data)
    if "error" in answer:
        raise AssertionError(f"in the child running as nobody:\n{answer['error']}")
    return answer["result"]
