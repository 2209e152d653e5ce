"""The informers' raw watch (agent.kube.client.raw_watch) builds no client of its own.

kubernetes_asyncio's ``Watch()`` builds an ApiClient (an aiohttp session and an SSL context that
loads the system CA store, ~25 ms of CPU) only to deserialize models; the raw watch deserializes
none, so every informer paid that once a minute for nothing.
"""

from __future__ import annotations

import ssl

import pytest
from kubernetes_asyncio import watch

from agent.kube.client import raw_watch


async def test_raw_watch_builds_no_ssl_context(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []
    real = ssl.create_default_context

    def counting(*args: object, **kwargs: object) -> ssl.SSLContext:
        made.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl, "create_default_context", counting)
    raw_watch()()
    assert made == []
    lib = watch.Watch()  # the library's own does (what this guards against)
    assert len(made) == 1
    await lib.close()


async def test_raw_watch_sets_what_the_library_watch_sets() -> None:
    """An upgrade of kubernetes_asyncio that adds state to Watch.__init__ fails here."""
    lib = watch.Watch()
    assert set(vars(raw_watch()())) == set(vars(lib))
    await lib.close()


async def test_raw_watch_closes_without_a_session() -> None:
    w = raw_watch()()
    await w.close()
    assert w.get_return_type(object()) == ""
