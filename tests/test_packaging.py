"""A non-editable install must find conf/ (shipped in the wheel as datacull/conf); declared dependencies."""
import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source tree")
def test_wheel_ships_conf_and_composes_from_it(tmp_path):
    pytest.importorskip("hatchling")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("datacull-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "datacull/conf/config.yaml" in names and "datacull/conf/data/fashion_mnist.yaml" in names
    assert "datacull/conf/hydra/job_logging/datacull.yaml" in names
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    probe = ("import datacull.config as c; from datacull.config import compose; "
             "print(c.conf_dir()); print(compose(['data=digits']).data.name)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(target) in out.stdout and "digits" in out.stdout


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {name: {_requirement_name(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    return {_requirement_name(r) for r in project["dependencies"]}, extras


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> files of the package importing it (module level and inside functions)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "datacull").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "datacull" and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source tree")
def test_every_import_of_the_package_is_a_declared_dependency_and_back():
    from importlib.metadata import packages_distributions

    core, extras = _declared()
    providers = packages_distributions()
    imported_dists = set()
    for module, files in _third_party_imports().items():
        dists = {_normalise(d) for d in providers.get(module, [])}
        assert dists, f"{module} (imported by {sorted(files)}) is not installed, so its distribution is unknown"
        assert dists & core, (f"{module} (imported by {sorted(files)}) comes from {sorted(dists)}, none of which is "
                              "in [project].dependencies")
        imported_dists |= dists & core
    # nothing in the core that the package never imports (launchers, wids: extras)
    assert core - imported_dists == set(), f"core dependencies never imported: {sorted(core - imported_dists)}"
    assert {"faiss-gpu"} <= extras["gpu"] and "faiss-cpu" in core  # the swap documented in the README
    assert {"wids", "hydra-joblib-launcher", "hydra-submitit-launcher"} <= extras["test"]
