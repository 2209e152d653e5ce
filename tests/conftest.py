"""Shared pytest configuration: the Kubernetes backends (kube, apiserver, kube_api) and isolation.

``kube`` is a :class:`tests.real_cluster.Backend`. Tests in a module or class marked
``pytest.mark.backends`` run once per backend chosen by ``$NODEMEDIC_K8S_BACKENDS`` (default
``memory,real``): the in-memory API server and the real control plane of hack/k8s. A test that
asks for ``apiserver`` (the in-memory server's own handle: fault injection, clocks, the store)
runs on ``memory`` only. Everything else runs on ``memory``. ``-m k8s_real`` selects the real tier.

Also points ``$STATE_DIRECTORY`` (the default of ``--state.dir``) at a fresh directory for every
test, so no test, in process or as a child agent, reads or writes the machine's
/var/lib/nodemedic or another test's local state. Module- and session-scoped fixtures are set up
before any per-test fixture, so the session gets one too: an agent such a fixture starts never
sees /var/lib/nodemedic (agents sharing a fixture still share it unless given --state.dir).

Under ``make test`` (``$NODEMEDIC_STRICT_SKIPS=1``) a skip is a failure: make test installs
everything the tests need, so a test that skips for a missing tool, privilege or kernel feature
would hide a part that CI no longer checks. The skips that are choices stay skips: the opt-in
real-node tier and backends left out by ``$NODEMEDIC_K8S_BACKENDS``.

agent.kube is imported first so that every test, like the daemon, sees kubernetes_asyncio through
agent.kube.lazy (only the modules a call needs), not the fully imported package.
"""

import os
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

import pytest
import pytest_asyncio

import agent.kube  # noqa: F401  (installs the lazy kubernetes_asyncio packages)

try:
    from nodemedic_sim.apiserver import ApiServer
except ModuleNotFoundError as exc:  # the tests drive the simulation distribution everywhere
    if exc.name != "nodemedic_sim":
        raise
    raise pytest.UsageError(
        "the tests need the simulation package nodemedic_sim: "
        "pip install -e '.[test,sim]' -e ./sim (make venv does)") from exc
from tests.real_cluster import Backend, RealCluster, chosen_backends, cluster_singleton

STRICT_SKIPS_ENV = "NODEMEDIC_STRICT_SKIPS"
# Skips that are a choice of the person running the tests, not a missing part.
CHOSEN_SKIPS = ("real nodes are off", "got empty parameter set")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get(STRICT_SKIPS_ENV) != "1":
        return
    if hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(chosen in reason for chosen in CHOSEN_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under {STRICT_SKIPS_ENV}=1 (make test installs everything the "
                       f"tests need, so this part would go unchecked): {reason}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_name" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("backends") is None:
        return
    names = chosen_backends()
    if metafunc.definition.get_closest_marker("real_only") is not None:
        names = [n for n in names if n == "real"]  # empty: pytest reports it skipped, by choice
    elif "apiserver" in metafunc.fixturenames:
        names = [n for n in names if n == "memory"] or ["memory"]
    params = [pytest.param(n, marks=[pytest.mark.k8s_real] if n == "real" else []) for n in names]
    metafunc.parametrize("backend_name", params, indirect=True)


@pytest.fixture
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "memory"))


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[RealCluster]:
    yield from cluster_singleton()


def _client(host: str, **cfg: Any) -> Any:
    from kubernetes_asyncio import client

    conf = client.Configuration(host=host)
    for k, v in cfg.items():
        setattr(conf, k, v)
    api = client.ApiClient(conf)
    api.user_agent = "nodemedic-tests"
    return api


@pytest_asyncio.fixture
async def kube(backend_name: str, request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The backend this test runs on (see the module docstring)."""
    if backend_name == "memory":
        server = ApiServer()
        await server.start()
        # kubernetes_asyncio reads api_key['BearerToken']; the in-memory server accepts any.
        api = _client(server.url, api_key={"BearerToken": "nodemedic-test"},
                      api_key_prefix={"BearerToken": "Bearer"})
        try:
            yield Backend("memory", server.url, api, server=server)
        finally:
            await api.close()
            await server.stop()
        return
    cluster: RealCluster = request.getfixturevalue("real_cluster")
    try:
        creds = cluster.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    api = _client(creds.server, ssl_ca_cert=creds.ca, cert_file=creds.cert, key_file=creds.key)
    backend = Backend("real", creds.server, api, creds=creds)
    backend.baseline = await backend.inventory()
    try:
        yield backend
    finally:
        await backend.cleanup()
        await api.close()


@pytest_asyncio.fixture
async def apiserver(kube: Backend) -> ApiServer:
    """The in-memory API server of a ``memory`` test (its fault, clock and store handles)."""
    assert kube.server is not None, "apiserver is the in-memory server: memory backend only"
    return kube.server


@pytest_asyncio.fixture
async def kube_api(kube: Backend) -> Any:
    """A kubernetes_asyncio ApiClient on the test's backend."""
    return kube.api


@pytest.fixture(scope="session", autouse=True)
def _session_state_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    patch = pytest.MonkeyPatch()
    patch.setenv("STATE_DIRECTORY", str(tmp_path_factory.mktemp("session-state")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _own_state_directory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path_factory.mktemp("state")))
    yield


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """Each test starts with the structlog configuration the one before it found: an agent
    started in process reconfigures logging (level filter included), and a later test's
    capture_logs() would otherwise miss records below that level."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
