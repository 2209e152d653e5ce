"""Runs scripts/install.sh and scripts/uninstall.sh into a temporary root and checks the result.

The install is real (a new venv and `pip install` of a copy of this checkout) except that the
test passes NODEMEDIC_PIP_ARGS=--no-deps: the runtime dependencies would come from the network,
and what is under test is the layout, not pip's resolver. Building still needs setuptools from
the configured package index.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "scripts" / "install.sh"
UNINSTALL = REPO / "scripts" / "uninstall.sh"

pytestmark = pytest.mark.slow


def _run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NODEMEDIC_PIP_ARGS="--no-deps")
    env.pop("DESTDIR", None)
    return subprocess.run(
        ["bash", str(script), *args], env=env, check=False, capture_output=True, text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One install into a fresh temporary root, shared by the read-only checks."""
    root = tmp_path_factory.mktemp("root")
    had_build = (REPO / "build").exists()
    proc = _run(INSTALL, "--root", str(root))
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (REPO / "build").exists() == had_build, "install.sh wrote build/ into the checkout"
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_venv_has_the_nodemedic_command_and_package(installed: Path) -> None:
    """/opt/nodemedic/venv holds the `nodemedic` script and imports this checkout's version.

    cwd is the temporary root: with `python -c` the current directory comes first on sys.path.
    """
    venv = installed / "opt/nodemedic/venv"
    assert os.access(venv / "bin/nodemedic", os.X_OK)
    proc = subprocess.run(
        [str(venv / "bin/python"), "-c", "import agent; print(agent.__version__, agent.__file__)"],
        check=True, capture_output=True, text=True, timeout=60, cwd=installed,
    )
    version, location = proc.stdout.split()
    assert version == __import__("agent").__version__
    assert location.startswith(str(venv)), "imported from the checkout, not the venv"


def test_a_node_install_ships_no_simulation(installed: Path) -> None:
    """The node's venv has the agent and none of the simulation (issue 16): no nodemedic_sim, no
    in-memory API server, demo or replay files, and jsonpatch and nodemedic-sim required only by
    the `sim`/`test` extras."""
    venv = installed / "opt/nodemedic/venv"
    proc = subprocess.run(
        [str(venv / "bin/python"), "-c",
         "import importlib.metadata as md, importlib.util, json; print(json.dumps({"
         "'sim': importlib.util.find_spec('nodemedic_sim') is not None, "
         "'files': [str(f) for f in md.files('nodemedic')], "
         "'requires': md.requires('nodemedic')}))"],
        check=True, capture_output=True, text=True, timeout=60, cwd=installed,
    )
    out = json.loads(proc.stdout)
    assert out["sim"] is False
    assert "agent/runtime/daemon.py" in out["files"]
    shipped = [f for f in out["files"] if f.startswith(("nodemedic_sim/", "agent/testing/",
                                                        "agent/demo/", "agent/replay/"))
               or f.endswith((".json.gz", ".pb.gz"))]
    assert shipped == []
    for req in out["requires"]:
        if req.startswith(("nodemedic-sim", "jsonpatch")):
            assert "extra ==" in req, req


def test_unit_and_defaults_are_installed_verbatim(installed: Path) -> None:
    """The unit, env file, config, every default rule and problem definition are copies of the
    checkout's files."""
    pairs = {
        "etc/systemd/system/nodemedic.service": "systemd/nodemedic.service",
        "etc/nodemedic/nodemedic.env": "systemd/nodemedic.env",
        "etc/nodemedic/config.yaml": "systemd/config.yaml",
    }
    pairs.update({f"etc/nodemedic/rules/{p.name}": f"rules/{p.name}"
                  for p in (REPO / "rules").glob("*.yaml")})
    pairs.update({f"etc/nodemedic/problems/{p.name}": f"problems/{p.name}"
                  for p in (REPO / "problems").glob("*.yaml")})
    for dst, src in pairs.items():
        assert (installed / dst).read_bytes() == (REPO / src).read_bytes(), dst
    installed_rules = {p.name for p in (installed / "etc/nodemedic/rules").iterdir()}
    assert installed_rules == {p.name for p in (REPO / "rules").glob("*.yaml")}


def test_config_directory_is_private(installed: Path) -> None:
    """/etc/nodemedic (where the kubeconfig goes) is 0750 and its files are not world-readable."""
    etc = installed / "etc/nodemedic"
    assert _mode(etc) == 0o750
    assert _mode(etc / "nodemedic.env") == 0o640
    assert _mode(installed / "etc/systemd/system/nodemedic.service") == 0o644


def test_reinstall_keeps_edits_and_uninstall_keeps_config_until_purge(
    installed: Path, tmp_path: Path
) -> None:
    """Re-installing keeps an edited env file (new default as .dist); --purge removes /etc."""
    root = tmp_path / "root"
    shutil.copytree(installed, root, symlinks=True)
    env_file = root / "etc/nodemedic/nodemedic.env"
    env_file.write_text("NODEMEDIC_ARGS=--config /etc/nodemedic/config.yaml\n")
    proc = _run(INSTALL, f"--root={root}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert env_file.read_text() == "NODEMEDIC_ARGS=--config /etc/nodemedic/config.yaml\n"
    assert (root / "etc/nodemedic/nodemedic.env.dist").read_bytes() == (
        REPO / "systemd/nodemedic.env"
    ).read_bytes()
    assert "kept your" in proc.stdout

    proc = _run(UNINSTALL, "--root", str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (root / "opt/nodemedic").exists()
    assert not (root / "etc/systemd/system/nodemedic.service").exists()
    assert (root / "etc/nodemedic/config.yaml").exists(), "config must survive a plain uninstall"

    proc = _run(UNINSTALL, "--root", str(root), "--purge")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (root / "etc/nodemedic").exists()


def test_unknown_argument_is_refused(tmp_path: Path) -> None:
    """A mistyped option stops the script with exit code 2 before touching anything."""
    proc = _run(INSTALL, "--rot", str(tmp_path))
    assert proc.returncode == 2
    assert "unknown argument: --rot" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def _doc_recipe() -> str:
    """The shell block that follows the kubeconfig-recipe marker in docs/install.md."""
    text = (REPO / "docs" / "install.md").read_text()
    after = text.split("<!-- kubeconfig-recipe", 1)[1]
    return after.split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
async def test_documented_kubeconfig_recipe_yields_a_loadable_kubeconfig(tmp_path: Path) -> None:
    """docs/install.md's kubectl config commands give a kubeconfig the agent's client loads."""
    # kubectl embeds the CA file's bytes without parsing them; nothing connects here.
    (tmp_path / "ca.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    )
    env = dict(os.environ, SERVER="https://10.0.0.1:6443", TOKEN="abc.def.ghi")
    env.pop("KUBECONFIG", None)
    proc = subprocess.run(["bash", "-euc", _doc_recipe()], cwd=tmp_path, env=env,
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kubeconfig = tmp_path / "nodemedic.kubeconfig"
    assert _mode(kubeconfig) == 0o600
    assert (tmp_path / "kubelet-token").read_text() == "abc.def.ghi"
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    assert cfg.host == "https://10.0.0.1:6443"
    assert cfg.api_key["BearerToken"] == "Bearer abc.def.ghi"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_pass_shellcheck() -> None:
    """install.sh and uninstall.sh have no shellcheck findings (quoting, word splitting)."""
    proc = subprocess.run(["shellcheck", str(INSTALL), str(UNINSTALL)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
