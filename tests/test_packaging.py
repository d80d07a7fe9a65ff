"""One import namespace: the wheel installs only ``physrl`` (issue: one package).

The fixed top-level folders ``sim/``, ``fitting/`` and ``organisms/`` are
installed as ``physrl.sim``, ``physrl.fitting`` and ``physrl.organisms``
(setuptools ``package-dir``); PyPI has unrelated distributions named
``fitting`` and ``organisms`` whose files pip would silently overwrite.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    try:
        import setuptools  # noqa: F401
        import wheel as _wheel  # noqa: F401  (bdist_wheel without build isolation)
        isolation = ["--no-build-isolation"]
    except ImportError:
        isolation = []  # pip fetches the build backend from the package index
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(out),
                           str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("physrl-*.whl")
    return path


def test_wheel_installs_only_the_physrl_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"physrl"}
    for sub in ("sim", "fitting", "organisms"):
        assert f"physrl/{sub}/__init__.py" in names
    assert "physrl/configs/demo.toml" in names


def test_installed_package_resolves_subpackages_and_not_the_folder_names(tmp_path):
    code = ("import importlib.util, physrl.sim, physrl.fitting, physrl.organisms;"
            "print(all(importlib.util.find_spec(n) is None for n in ('sim', 'fitting', 'organisms')))")
    # run outside the repo, so the checkout's folders are not on sys.path
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"
