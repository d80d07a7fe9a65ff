"""A read-only install (package and HOME not writable, e.g. a shared cluster module) imports and runs the numba engine.

Numba caches its compiled kernel beside the source or under ``~/.cache/numba``; with neither writable it used to
refuse at import ("cannot cache function '_sigmoid': no locator available", numba #4908 / #5566). The test copies
the package into a read-only folder and runs it as a non-root user whose HOME is read-only: root ignores permission
bits, so as root the child runs in a user namespace as an unprivileged uid (``unshare --map-user``).
"""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from physrl.sim._integrate import numba_available

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import os, sys, glob
import numpy as np
import physrl.sim._numba as nb
from physrl import sim
assert nb.__file__.startswith(sys.argv[1]), nb.__file__      # the read-only copy, not the work tree
model = sim.ToyModel(sim.IdentityCoupling(2), sim.IdentityCoupling(2), sim.IdentityCoupling(2),
                     [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], w=[0.5, 0.5])
y0 = sim.Latents.from_probabilities(np.array([0.1, 0.2]), 0.6, 0.3)
ref = sim.euler(model, y0, dt=0.01, t_max=2.0, tol=None, save="final", engine="numpy")
sol = sim.euler(model, y0, dt=0.01, t_max=2.0, tol=None, save="final", engine="numba")
p, p_ref = np.asarray(sol.p), np.asarray(ref.p)
assert np.max(np.abs(p - p_ref)) < 1e-12 and np.max(np.abs(p.ravel() - [0.1, 0.2])) > 1e-3, (p, p_ref)
print("CACHE_DIR=" + str(os.environ.get("NUMBA_CACHE_DIR")))
print("INDEX_FILES=%d" % len(glob.glob(os.path.join(os.environ.get("NUMBA_CACHE_DIR") or "/nonexistent", "**", "*.nbi"),
                                       recursive=True)))
"""


def _read_only(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _as_unprivileged_user() -> list[str]:
    """The command prefix that runs a child as a non-root user, or skip saying why none exists."""
    if os.geteuid() != 0:
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("running as root and no `unshare` to drop to an unprivileged uid (root ignores file modes)")
    # ns uid 1000 <- real uid 0: the child can read root's files (the interpreter lives under /root) but has no
    # capabilities, so file modes hold for it
    prefix = [unshare, "--user", "--map-user=1000", "--map-group=1000"]
    probe = subprocess.run([*prefix, "id", "-u"], capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != "1000":
        pytest.skip(f"running as root and user namespaces are unavailable here ({probe.stderr.strip()[:200]})")
    return prefix


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
def test_numba_engine_runs_from_a_read_only_install_with_an_unwritable_home(tmp_path):
    prefix = _as_unprivileged_user()
    site = tmp_path / "site"
    pkg = site / "physrl"
    pkg.mkdir(parents=True)
    shutil.copy(ROOT / "physrl" / "__init__.py", pkg / "__init__.py")
    shutil.copytree(ROOT / "physrl" / "_util", pkg / "_util", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "sim", pkg / "sim", ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path / "home"
    home.mkdir()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    tmpdir.chmod(0o777)
    _read_only(site)
    _read_only(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_") and k != "XDG_CACHE_HOME"}
    env.update(HOME=str(home), TMPDIR=str(tmpdir), PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1",
               OMP_NUM_THREADS="1")
    try:
        out = subprocess.run([*prefix, sys.executable, "-c", CHILD, str(pkg)], env=env, cwd=str(home),
                             capture_output=True, text=True, timeout=600)
    finally:
        for p in [site, home, *site.rglob("*")]:  # let pytest clean up
            if p.is_dir():
                p.chmod(0o755)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no locator available" not in out.stderr
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    # numba had nowhere else to cache: the kernel was cached in a per-user folder of TMPDIR
    assert lines["CACHE_DIR"].startswith(str(tmpdir)), out.stdout
    assert int(lines["INDEX_FILES"]) >= 1, out.stdout
