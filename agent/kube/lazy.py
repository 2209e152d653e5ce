"""Load only the parts of kubernetes_asyncio that the agent uses.

kubernetes_asyncio's package ``__init__`` files import every API class (``client``,
``client.api``) and all ~770 models (``client.models``): about 37 MiB of RSS on every node,
although nodemedic reads every response as JSON (``_preload_content=False``, a raw watch) and
builds no model. :func:`install` puts light stand-ins for those four packages into
``sys.modules`` before anything imports them. Each stand-in is a real package (its ``__path__`` is
the installed directory, so ``import kubernetes_asyncio.client.api.core_v1_api`` works as usual)
whose public names are resolved on first use by a module ``__getattr__``: ``client.CoreV1Api``
imports only ``client/api/core_v1_api.py``, and the ApiClient's deserializer, which looks a
model up by name on ``kubernetes_asyncio.client.models``, still finds any model it is asked for.
The name → module map is read from the package's own ``__init__`` source, so it is whatever the
installed version exports; nothing is listed here.

One API module is big on its own: ``core_v1_api.py`` (2.8 MB of generated source, ~400 methods,
2.8 MiB of code objects once imported) of which the agent calls about 15. An API class whose
module is over :data:`BIG_API_BYTES` is served by :func:`_lazy_api_class`: a class whose
methods are compiled from the library's own source on first use (the generated ``def`` is cut
out of the file at the offset indexed once), so a method behaves exactly as the library's and
any method a caller asks for exists; only the unused ones are never loaded.

Called once by agent/kube/__init__.py, so every ``from kubernetes_asyncio import client`` in
agent.kube goes through it. If kubernetes_asyncio was already imported (e.g. a test imported it
first) the real packages stay and this does nothing.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any

ROOT = "kubernetes_asyncio"
# The packages whose __init__ imports far more than the agent needs.
HEAVY_PACKAGES = (ROOT, f"{ROOT}.client", f"{ROOT}.client.api", f"{ROOT}.client.models")
_FROM_IMPORT = re.compile(rf"^from ({ROOT}(?:\.\w+)+) import (\w+)\s*$", re.MULTILINE)
_VERSION = re.compile(r"^__version__ = \"([^\"]+)\"", re.MULTILINE)
# API modules bigger than this get their methods compiled on first use (core_v1_api: 2.8 MB).
BIG_API_BYTES = 512 * 1024
_METHOD = re.compile(rb"^    def (\w+)\(", re.MULTILINE)


def _lazy_api_class(module: str, name: str) -> type[Any] | None:
    """``name`` from the generated API module ``module``, with methods compiled on first use;
    None when the module is small (imported as usual) or not laid out as expected."""
    spec = importlib.util.find_spec(module)
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    if origin is None or origin.suffix != ".py" or origin.stat().st_size < BIG_API_BYTES:
        return None
    data = origin.read_bytes()
    head_end = data.find(f"\nclass {name}(".encode())
    if head_end < 0:
        return None
    starts = [(m.group(1).decode(), m.start()) for m in _METHOD.finditer(data)]
    spans: dict[str, tuple[int, int]] = {}
    for (meth, start), (_, nxt) in zip(starts, [*starts[1:], ("", len(data))], strict=True):
        spans.setdefault(meth, (start, nxt))
    if "__init__" not in spans:
        return None
    namespace: dict[str, Any] = {"__name__": module}
    # The library's own installed source, as an import would run it (its imports, then defs).
    exec(compile(data[:head_end], str(origin), "exec"), namespace)  # noqa: S102
    del data

    def method(attr: str) -> Any:
        start, end = spans[attr]
        with origin.open("rb") as f:
            f.seek(start)
            source = f.read(end - start).decode("utf-8")
        body: dict[str, Any] = {}
        exec(compile(f"class _One:\n{source}", str(origin), "exec"), namespace, body)  # noqa: S102
        return body["_One"].__dict__[attr]

    def __getattr__(self: Any, attr: str) -> Any:
        if attr not in spans or attr.startswith("__"):
            raise AttributeError(f"{name!r} object has no attribute {attr!r}")
        fn = method(attr)
        setattr(cls, attr, fn)  # compiled once; later lookups are plain methods
        return fn.__get__(self, cls)

    cls = type(name, (object,), {"__init__": method("__init__"), "__getattr__": __getattr__,
                                 "__module__": module,
                                 "__doc__": f"{module}.{name}, methods compiled on first use"})
    return cls


class _LazyPackage(types.ModuleType):
    """A package whose public names are imported from their own submodule on first access."""

    def __init__(self, name: str, directory: Path) -> None:
        super().__init__(name)
        self.__path__ = [str(directory)]
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = self.__path__
        self.__spec__ = spec
        self.__package__ = name
        self._nodemedic_exports: dict[str, str] | None = None
        init = directory / "__init__.py"
        self._nodemedic_init = init
        match = _VERSION.search(init.read_text(encoding="utf-8")) if name == ROOT else None
        if match:
            self.__version__ = match.group(1)

    def _exports(self) -> dict[str, str]:
        """Public name → defining module, as the real ``__init__`` imports them."""
        if self._nodemedic_exports is None:
            text = self._nodemedic_init.read_text(encoding="utf-8")
            self._nodemedic_exports = {name: mod for mod, name in _FROM_IMPORT.findall(text)}
        return self._nodemedic_exports

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr.startswith("_nodemedic"):
            raise AttributeError(attr)
        module = self._exports().get(attr)
        if module is not None:
            value: Any = None
            if module.startswith(f"{ROOT}.client.api."):
                value = _lazy_api_class(module, attr)
            if value is None:
                value = getattr(importlib.import_module(module), attr)
        elif any((Path(p) / attr).is_dir() or (Path(p) / f"{attr}.py").is_file()
                 for p in self.__path__):
            value = importlib.import_module(f"{self.__name__}.{attr}")
        else:
            raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")
        setattr(self, attr, value)  # resolved once; later lookups are plain attributes
        return value


def install() -> bool:
    """Put the lazy stand-ins into ``sys.modules``; False when kubernetes_asyncio was loaded."""
    if any(name in sys.modules for name in HEAVY_PACKAGES):
        return False
    spec = importlib.util.find_spec(ROOT)
    if spec is None or not spec.submodule_search_locations:
        return False  # not installed: the first real import reports it
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in HEAVY_PACKAGES:
        package = _LazyPackage(name, root.joinpath(*name.split(".")[1:]))
        sys.modules[name] = package
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, package)
    return True
