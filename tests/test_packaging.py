"""The installed package: its dependency floors hold, and components, pipelines and configs live inside
``lightreasoner``, never as top-level names in site-packages (a user's own ``components`` package must not
be shadowed)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_has_no_top_level_components_or_pipelines(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("lightreasoner", "components", "pipelines", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("lightreasoner-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert top == {"lightreasoner"}
    assert {"lightreasoner/components/__init__.py", "lightreasoner/pipelines/client.py",
            "lightreasoner/pipelines/lightreasoner_pipeline.yaml",
            "lightreasoner/configs/paper-qwen2.5-math.yaml", "lightreasoner/demo.yaml"} <= set(names)


def test_the_cli_does_not_import_kfp_until_a_pipeline_command_runs():
    code = "import sys, lightreasoner.cli as c; c.build_parser(); print('kfp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr


def _requirements() -> list[tuple[str, str]]:
    """(where, requirement) of every dependency pyproject.toml declares: the package's and each extra's."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = [("dependencies", r) for r in project["dependencies"]]
    out += [(f"[{extra}]", r) for extra, reqs in project["optional-dependencies"].items() for r in reqs]
    return out


def test_installed_versions_meet_every_floor():
    """The floors are versions the code runs on: what is installed (the tests' environment) satisfies each
    declared bound; an extra's package that is not installed here (the server's) is left out."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    unmet = []
    for where, text in _requirements():
        req = Requirement(text)
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            if where == "dependencies" or where == "[dev]":
                unmet.append(f"{where}: {text}: not installed")
            continue
        if not req.specifier.contains(installed, prereleases=True):
            unmet.append(f"{where}: {text}: installed {installed}")
    assert unmet == []


def test_every_dependency_has_a_floor():
    from packaging.requirements import Requirement

    for where, text in _requirements():
        assert any(s.operator in (">=", "==", "~=") for s in Requirement(text).specifier), (where, text)
