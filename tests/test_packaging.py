"""Packaging: pyproject declares the runtime dependencies, the pinned lock satisfies them, and a wheel
built from the tree installs into a fresh virtual environment where `import cpdistiller_core` and
`cpdistiller --help` work. No internet: the wheel is built without build isolation and installed with
--no-deps; the fresh environment sees the already-installed pinned requirements through a .pth file."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            pins[_norm(req.name)] = next(iter(req.specifier)).version
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_declared_dependency_is_pinned_and_the_pin_fits_the_range() -> None:
    project = _pyproject()["project"]
    pins = _pins(REPO / "requirements.txt")
    dev_pins = {**pins, **_pins(REPO / "requirements-dev.txt")}
    declared = [Requirement(r) for r in project["dependencies"]]
    assert len(declared) >= 15  # not the empty list an uninstallable package had
    for reqs in project["optional-dependencies"].values():
        declared += [Requirement(r) for r in reqs if not r.startswith("cpdistiller[")]
    for req in declared:
        name = _norm(req.name)
        assert name in dev_pins, f"{req.name} is declared in pyproject.toml but not pinned in requirements*.txt"
        assert req.specifier.contains(dev_pins[name]), f"pin {name}=={dev_pins[name]} outside {req.specifier}"
    core = {_norm(Requirement(r).name) for r in project["dependencies"]}
    assert "torch" in core and "streamlit" not in core  # the dashboard is an extra


# Imported but installed through a declared distribution (dask[distributed] -> distributed,
# scikit-learn -> threadpoolctl, requests -> urllib3, pip/scanpy -> packaging).
TRANSITIVE = {"distributed", "threadpoolctl", "urllib3", "packaging"}
# Imported on demand with an error naming them: converting the TensorFlow Mesmer model (extractor).
OPTIONAL = {"tensorflow", "keras"}


def test_runtime_imports_are_declared() -> None:
    """Every third-party module the engine imports comes from a declared distribution."""
    project = _pyproject()["project"]
    declared = {_norm(Requirement(r).name) for r in project["dependencies"]}
    for reqs in project["optional-dependencies"].values():
        declared |= {_norm(Requirement(r).name) for r in reqs if not r.startswith("cpdistiller[")}
    dists = metadata.packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    imported = set()
    for path in (REPO / "cpdistiller_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    missing = []
    for mod in sorted(imported - stdlib - {"cpdistiller_core"}):
        names = {_norm(d) for d in dists.get(mod, [])}
        if not names & declared and mod not in TRANSITIVE | OPTIONAL:
            missing.append(f"{mod} (from {sorted(names) or 'no installed distribution'})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    src = tmp_path / "src"  # setuptools writes build/ and *.egg-info next to the sources: not in the tree
    shutil.copytree(REPO / "cpdistiller_core", src / "cpdistiller_core",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    # Offline with the environment's setuptools; where it has none (Python >= 3.12 venvs), pip's build
    # isolation fetches setuptools from the configured package index, as `make install` does.
    offline = ["--no-build-isolation", "--no-index"] if importlib.util.find_spec("setuptools") else []
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", *offline, "-q", "-w", str(wheels)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("cpdistiller-*.whl")

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=env).stdout.strip()
    # The pinned requirements installed here (make test / make install) stand in for
    # `pip install -r requirements.txt`: visible to the fresh venv, but not this tree's editable install
    # (paths named in a .pth file are added without processing the .pth files found there).
    Path(site, "pinned_requirements.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]

    probe = subprocess.run(
        [str(py), "-c", "import cpdistiller_core as cpd; print(cpd.__file__); print(cpd.correct.__name__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert Path(probe.stdout.splitlines()[0]).resolve().is_relative_to(venv.resolve())  # the wheel, not the tree
    check = subprocess.run([str(py), "-m", "pip", "check"], capture_output=True, text=True, env=env, timeout=300)
    assert "cpdistiller" not in check.stdout, check.stdout  # its declared requirements are all satisfied
    script = venv / ("Scripts/cpdistiller.exe" if os.name == "nt" else "bin/cpdistiller")
    helped = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)
    assert helped.returncode == 0, helped.stderr[-3000:]
    assert "correct" in helped.stdout and "evaluate" in helped.stdout
