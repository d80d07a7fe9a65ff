"""Crash safety of `physrl organisms train` (issue 12 §1): atomic checkpoints, resume from the newest
complete one, and real SIGKILLs at chosen and at random moments, after which the finished run's rows
equal an uninterrupted run's exactly."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from physrl.contract import read_manifest, read_rollouts
from physrl.organisms import OrganismConfig, saved_config, train
from physrl.organisms import _checkpoints

#: a tiny organism: 40 stage-1 steps, 12 GRPO steps, checkpoints (and chunk flushes) every 4 steps
TINY = dict(n_envs=2, n_heldout=1, pretrain_steps=40, pretrain_batch_size=16, max_steps=12, groups_per_step=2,
            num_generations=4, eval_prompts_per_env=1, eval_every=4, checkpoint_every=4, hidden_size=16, n_heads=2,
            progress=False, seed=3)
QUIET = dict(log=lambda *a, **k: None)
KEY = ["step", "phase", "group_id"]


def _rows(run_dir):
    """Every column but run_id, in a canonical order."""
    df = read_rollouts(run_dir).drop(columns=["run_id"])
    return df.sort_values(KEY + ["env_id", "completion", "reward"], kind="stable").reset_index(drop=True)


def _batches(df) -> tuple[int, int]:
    """(duplicated, missing) (step, phase, group) batches against the TINY schedule."""
    cfg = OrganismConfig(**TINY)
    size = df.groupby(KEY).size()
    duplicated = int((size > cfg.num_generations).sum())
    expected = {(s, "train", g) for s in range(cfg.max_steps) for g in range(cfg.groups_per_step)}
    expected |= {(s, "eval", g) for s in range(0, cfg.max_steps + 1, cfg.eval_every)
                 for g in range(cfg.n_family * cfg.eval_prompts_per_env)}
    return duplicated, len(expected - set(size.index)) + len(set(size.index) - expected)


REFERENCE_SECONDS = [0.0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in process."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    t0 = time.time()
    train(OrganismConfig(**TINY), run_dir, **QUIET)
    REFERENCE_SECONDS[0] = time.time() - t0
    return run_dir


# ---- what makes a checkpoint complete -------------------------------------------------------------
def test_checkpoint_problems_are_named(reference, tmp_path):
    good = reference / "checkpoints" / "checkpoint-12"
    assert _checkpoints.problem(good) is None
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-8"]

    def broken(change):
        path = tmp_path / f"c{len(list(tmp_path.iterdir()))}" / "checkpoint-12"
        shutil.copytree(good, path)
        change(path)
        return _checkpoints.problem(path)

    def truncate(name, keep):
        def change(path):
            data = (path / name).read_bytes()
            (path / name).write_bytes(data[:keep if keep >= 0 else len(data) + keep])
        return change

    size = (good / "model.safetensors").stat().st_size
    assert broken(lambda p: [f.unlink() for f in p.iterdir() if f.name != "config.json"]) == (
        "missing model.safetensors, optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json")
    assert broken(truncate("model.safetensors", 5)) == "model.safetensors is truncated (5 bytes)"
    assert broken(truncate("model.safetensors", 40)).startswith("model.safetensors is truncated (header of")
    assert broken(truncate("model.safetensors", -1)) == f"model.safetensors is truncated ({size - 1} of {size} bytes)"
    assert broken(truncate("optimizer.pt", -100)) == "optimizer.pt is truncated"
    assert broken(truncate("rng_state.pth", 10)) == "rng_state.pth is truncated"
    assert broken(truncate("trainer_state.json", 10)) == "trainer_state.json is not valid JSON"
    moved = tmp_path / "moved" / "checkpoint-16"
    shutil.copytree(good, moved)
    assert _checkpoints.problem(moved) == "trainer_state.json says step 12"


def test_resume_skips_incomplete_checkpoints_and_says_why(reference, tmp_path, stop_after):
    """Issue 12's reproduction: stop after step 20 with checkpoint_every 10, create checkpoint-20/ holding
    just config.json; later a checkpoint with a truncated model.safetensors. Resume falls back to the newest
    complete checkpoint each time and the rows equal the uninterrupted run's."""
    cfg = OrganismConfig(**{**TINY, "max_steps": 30, "checkpoint_every": 10, "eval_every": 10})
    ref = tmp_path / "ref30"
    train(cfg, ref, **QUIET)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir, recorder_hook=stop_after(20), **QUIET)
    ck = run_dir / "checkpoints"
    assert sorted(p.name for p in ck.glob("checkpoint-*")) == ["checkpoint-10"]
    (ck / "checkpoint-20").mkdir()
    (ck / "checkpoint-20" / "config.json").write_text("{}")
    said = []
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir, resume=True, recorder_hook=stop_after(25), log=said.append)
    assert said[0].startswith("skipped checkpoint-20: incomplete (missing model.safetensors, optimizer.pt, "
                              "scheduler.pt, rng_state.pth, trainer_state.json; a run killed while writing it?); "
                              "moved to .incomplete-checkpoint-20-"), said
    assert "from checkpoint-10;" in said[1]
    assert sorted(p.name for p in ck.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-20"]
    weights = ck / "checkpoint-20" / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:size // 2])
    said = []
    train(cfg, run_dir, resume=True, log=said.append)
    assert said[0].startswith(f"skipped checkpoint-20: incomplete (model.safetensors is truncated ({size // 2} of "
                              f"{size} bytes)"), said
    assert "from checkpoint-10;" in said[1]
    assert len(list(ck.glob(".incomplete-checkpoint-20-*"))) == 2  # moved aside, never deleted
    pd.testing.assert_frame_equal(_rows(run_dir), _rows(ref))
    manifest = read_manifest(run_dir)
    assert manifest.status == "finished" and manifest.rows_written == len(_rows(ref))
    assert manifest.organisms["resumed"] == 2
    assert manifest.organisms["grpo_seconds"] > read_manifest(ref).organisms["grpo_seconds"] * 0.5


def _package_dirs() -> list[str]:
    """The source folders of physrl's packages (real paths): the code whose import is under test.

    Narrower than the checkout: a venv inside it (``./.venv``) or beside it (``<checkout>-venv``, which a string
    prefix test confused with the checkout) holds third-party code, which may set what it likes.
    """
    import importlib.util

    return [os.path.realpath(folder) for name in ("physrl", "physrl.sim", "physrl.fitting", "physrl.organisms")
            for folder in importlib.util.find_spec(name).submodule_search_locations]


def test_importing_organisms_changes_no_process_state():
    """Warning filters, environment variables and torch's thread counts are the training call's business
    (issue 11 §5): no module of the repo sets any of them while physrl.organisms is imported (libraries it
    imports may). A call counts as the repo's when its caller's file lies (real path) in one of physrl's
    package folders."""
    code = r"""
import os, sys, warnings
from pathlib import Path
import torch
ours = [Path(folder) for folder in sys.argv[1:]]
skip = ("/os.py", "/_collections_abc.py", "/warnings.py")
calls = []

def is_ours(filename):
    if filename.startswith("<"):  # <frozen ...>, <string>
        return False
    path = Path(os.path.realpath(filename))
    return any(path.is_relative_to(folder) for folder in ours)

def spy(what, original):
    def wrapper(*args, **kwargs):
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.endswith(skip):
            frame = frame.f_back
        if frame is not None and is_ours(frame.f_code.co_filename):
            calls.append((what, frame.f_code.co_filename, frame.f_lineno))
        return original(*args, **kwargs)
    return wrapper

warnings.filterwarnings = spy("filterwarnings", warnings.filterwarnings)
warnings.simplefilter = spy("simplefilter", warnings.simplefilter)
type(os.environ).__setitem__ = spy("os.environ", type(os.environ).__setitem__)
torch.set_num_threads = spy("torch.set_num_threads", torch.set_num_threads)
torch.set_num_interop_threads = spy("torch.set_num_interop_threads", torch.set_num_interop_threads)
import physrl.organisms, physrl.organisms._train, physrl.organisms.cli
print(calls)
"""
    folders = _package_dirs()
    assert len(folders) == 4 and all(os.path.isdir(folder) for folder in folders), folders
    out = subprocess.run([sys.executable, "-c", code, *folders], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out


# ---- real SIGKILLs ---------------------------------------------------------------------------------
#: runs `physrl` in a child after arming one self-inflicted SIGKILL at a chosen moment (no cleanup runs:
#: no finally blocks, no atexit, buffered rows lost, files left as they are)
KILLER = r'''
import os, signal, sys
point, n = sys.argv[1], int(sys.argv[2])
calls = [0]

def die():
    sys.stderr.write(f"SIGKILL at {point} #{n}\n"); sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

def armed(original, when):
    def wrapper(*args, **kwargs):
        if when(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                return die_after(original, args, kwargs)
        return original(*args, **kwargs)
    return wrapper

def die_after(original, args, kwargs):
    if point == "optimizer_step":           # inside the n-th AdamW step, before it updates the weights
        die()
    result = original(*args, **kwargs)      # the file is written ...
    if point == "checkpoint":               # ... cut to half, as a kill in the middle of it would
        path = args[1]
        os.truncate(path, os.path.getsize(path) // 2)
    die()                                   # ... and the process dies before anything renames it

import torch, pyarrow.parquet as pq
if point == "optimizer_step":
    torch.optim.AdamW.step = armed(torch.optim.AdamW.step, lambda *a, **k: True)
elif point == "chunk_flush":
    pq.write_table = armed(pq.write_table, lambda *a, **k: True)
elif point == "checkpoint":
    torch.save = armed(torch.save, lambda obj, f, *a, **k: str(f).endswith("optimizer.pt"))
from physrl.cli import main
sys.exit(main(sys.argv[3:]))
'''


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _physrl(args, tmp_path, point=None, n=0, timeout=600):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    cmd = [sys.executable, str(script), point or "none", str(n), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)


def test_sigkill_at_three_moments_then_resume_gives_the_uninterrupted_rows(reference, tmp_path):
    """Fast (CI) variant: SIGKILL in stage-1 pretraining, mid-chunk-flush and mid-checkpoint."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    run_dir = tmp_path / "run"
    kills = [  # (moment, the n-th call of the armed function in that process, what must be on disk then)
        ("optimizer_step", 20, lambda: not (run_dir / "model_init").exists()),  # stage 1 has 40 steps
        ("chunk_flush", 2, lambda: len(list((run_dir / "rollouts").glob(".part-*.tmp"))) == 1),  # step 8
        ("checkpoint", 1, lambda: (run_dir / "checkpoints" / ".incoming" / "checkpoint-8").is_dir()
         and not (run_dir / "checkpoints" / "checkpoint-8").exists()),
    ]
    for i, (point, n, on_disk) in enumerate(kills):
        args = ["organisms", "train", "--out", str(run_dir), "--config", str(config)] if i == 0 else \
            ["organisms", "train", "--resume", str(run_dir)]
        out = _physrl(args, tmp_path, point, n)
        assert out.returncode == -signal.SIGKILL, (point, out.returncode, out.stderr[-2000:])
        assert on_disk(), (point, sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")))
        assert read_manifest(run_dir).status == "running"  # nothing ran after the kill
    out = _physrl(["organisms", "train", "--resume", str(run_dir)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "from checkpoint-4;" in out.stdout
    rows, ref = _rows(run_dir), _rows(reference)
    assert _batches(rows) == (0, 0)
    pd.testing.assert_frame_equal(rows, ref)
    manifest = read_manifest(run_dir)
    assert manifest.status == "finished" and manifest.rows_written == len(ref)
    assert manifest.organisms["resumed"] == 3


@pytest.mark.slow
def test_sigkill_at_twenty_random_moments(reference, tmp_path):
    """Slow variant: 20 SIGKILLs at random moments, each followed by a resume, over as many runs as it takes.
    A moment is drawn at random among: an external SIGKILL at a random time after the process started
    working; a self-inflicted one in a random AdamW step (stage 1 or GRPO), in a random chunk flush, or in
    a random checkpoint write (the last two are milliseconds long, so a random time rarely hits them).
    Every other run has the stage-1 cache off, so stage 1 runs (and can be killed) in every process of it."""
    cfg = OrganismConfig(**TINY)
    rng = random.Random(12)
    ref = _rows(reference)
    work = 1.5 * REFERENCE_SECONDS[0]
    kills, runs, where = 0, 0, []
    while kills < 20:
        runs += 1
        run_dir = tmp_path / f"run{runs}"
        config = tmp_path / f"tiny{runs}.json"
        config.write_text(json.dumps({**TINY, "stage1_cache": "off" if runs % 2 else "auto"}))
        args = ["organisms", "train", "--out", str(run_dir), "--config", str(config)]
        while True:
            point, n = "none", 0
            if kills < 20:
                point = rng.choice(["time", "optimizer_step", "chunk_flush", "checkpoint"])
                n = {"time": 0, "optimizer_step": rng.randint(1, cfg.pretrain_steps + cfg.max_steps),
                     "chunk_flush": rng.randint(1, 3), "checkpoint": rng.randint(1, 3)}[point]
            script = tmp_path / "killer.py"
            script.write_text(KILLER)
            proc = subprocess.Popen([sys.executable, str(script), point, str(n), *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=_env())
            if point == "time":
                _wait_until_working(proc, run_dir, resume=args[2] == "--resume")
                try:
                    proc.wait(timeout=rng.uniform(0.0, work))
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
            stdout, stderr = proc.communicate()
            if proc.returncode == 0:
                break
            assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
            kills += 1
            where.append(f"{point}: {_moment(run_dir)}")
            args = ["organisms", "train", "--resume", str(run_dir)]
        rows = _rows(run_dir)
        duplicated, missing = _batches(rows)
        print(f"run {runs}: rows {len(rows)} (reference {len(ref)}), duplicated {duplicated}, missing {missing}")
        assert (duplicated, missing) == (0, 0)
        pd.testing.assert_frame_equal(rows, ref)
    print(f"{kills} SIGKILLs over {runs} runs, at: {pd.Series(where).value_counts().to_dict()}")


def _wait_until_working(proc, run_dir: Path, resume: bool) -> None:
    """Past the imports: the new run's manifest exists, or the resume said where it resumes from."""
    if resume:
        proc.stdout.readline()
        return
    while proc.poll() is None and not (run_dir / "manifest.json").exists():
        time.sleep(0.02)


def _moment(run_dir: Path) -> str:
    """Roughly where a kill fell, from what it left on disk."""
    if not (run_dir / "model_init").exists():
        return "stage 1"
    if list((run_dir / "rollouts").glob(".*.tmp")):
        return "chunk flush"
    if list((run_dir / "checkpoints" / ".incoming").glob("checkpoint-*")):
        return "checkpoint"
    return "GRPO step"


# ---- one trainer per run directory -------------------------------------------------------------------
#: holds a run's training lock from another process until killed
HOLDER = r'''
import sys, time
from physrl.organisms import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(300)
'''


def _snapshot(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in run_dir.rglob("*") if p.is_file() and p.name != ".train.lock"}


def test_a_second_trainer_of_a_run_is_refused_and_touches_nothing(reference, tmp_path, capsys):
    """Two trainers in one run folder (a second --resume while the first runs, or an experiment rerun beside an
    orphaned worker) interleaved checkpoint rotation and chunk writes: measured, two concurrent resumes of a
    killed 40-step run left batches logged in two chunks (a run no reader or resume accepts) once in four tries.
    Now the second stops at once naming the holder's pid; the lock dies with its holder (SIGKILL included)."""
    from physrl.cli import main
    from physrl.organisms import RunInUse, run_lock

    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    (tmp_path / "holder.py").write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, str(tmp_path / "holder.py"), str(run_dir)], stdout=subprocess.PIPE,
                              text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(run_dir)
        for argv in (["organisms", "train", "--resume", str(run_dir)],
                     ["organisms", "train", "--out", str(run_dir), "--config", str(tmp_path / "tiny.json")]):
            (tmp_path / "tiny.json").write_text(json.dumps(TINY))
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert err.splitlines() == [f"physrl organisms: {run_dir} is being trained by another process "
                                        f"(pid {holder.pid}); let it finish or stop it, then resume"], err
        with pytest.raises(RunInUse, match=f"pid {holder.pid}"):
            train(OrganismConfig(**TINY), run_dir, resume=True, **QUIET)
        assert _snapshot(run_dir) == before and read_manifest(run_dir).status == "finished"
    finally:
        holder.kill()
        holder.wait()
    with run_lock(run_dir):  # the kernel dropped the killed holder's lock (its file may remain)
        pass
    assert not (run_dir / ".train.lock").exists()
    assert main(["organisms", "train", "--resume", str(run_dir)]) == 0
    assert "nothing to resume" in capsys.readouterr().out
