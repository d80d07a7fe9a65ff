"""The calibration sweep: which knob settings make N = 1 and N = 8 end differently?

For each knob setting, the sweep trains one run per N (same knobs, seed and
distribution of local-task difficulty: every env's digit map is drawn the
same way, with the same number of pretrained entries) and reads the final RS
share on the training envs from the eval rows. The diversity effect (docs/model.md
section 3) is a setting where RS loses at N = 1 (final share < 0.5) and wins
at N = 8 (> 0.5).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from physrl.contract import read_manifest, read_rollouts

from ._config import OrganismConfig


def summarize(run_dir: str | Path) -> pd.DataFrame:
    """Per eval step on the training envs: p (RS share), a (mean reward | RS), b (mean reward | not RS), n.

    docs/model.md section 6 estimators, from the eval rows of a run's logs.
    """
    df = read_rollouts(run_dir)
    trained = set(read_manifest(run_dir).trained_env_ids)
    ev = df[(df.phase == "eval") & df.env_id.isin(trained)]
    rows = []
    for step, g in ev.groupby("step"):
        rows.append({"step": int(step), "p": g.rs.mean(), "a": g.reward[g.rs].mean(), "b": g.reward[~g.rs].mean(),
                     "n": len(g)})
    return pd.DataFrame(rows)


def crossing_step(summary: pd.DataFrame, level: float = 0.5) -> int | None:
    """First eval step at which the RS share p reaches ``level`` (None if it never does)."""
    hit = summary.step[summary.p >= level]
    return int(hit.iloc[0]) if len(hit) else None


def run_pair(config: OrganismConfig, out_dir: Path, n_values=(1, 8)) -> dict[str, Any]:
    """Train one run per N in ``n_values`` with otherwise equal config; return their summaries.

    Each summary carries ``attrs["seconds"]``: the run's wall time (NaN if it was already finished on disk),
    and ``attrs["organisms"]``: the manifest's ``organisms`` record (stage-1 cache use, CPU and eval seconds).
    """
    from ._trainers import train

    result: dict[str, Any] = {}
    for n in n_values:
        run_dir = out_dir / f"n{n}"
        seconds = float("nan")
        if not (run_dir / "manifest.json").exists() or read_manifest(run_dir).status != "finished":
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            t0 = time.time()
            train(config.replace(n_envs=n, progress=False), run_dir, log=lambda *a: None)
            seconds = time.time() - t0
        s = summarize(run_dir)
        s.attrs["seconds"] = seconds
        s.attrs["organisms"] = read_manifest(run_dir).organisms or {}
        result[n] = s
    return result


def calibrate(base: OrganismConfig, grid: dict[str, list], out_dir: str | Path, n_values=(1, 8),
              seeds=(0,)) -> pd.DataFrame:
    """Sweep the knob grid (cartesian product of ``grid``) x seeds; one run per N each.

    Returns one row per (setting, seed, N): the knob values, N, RS share at
    step 0, at mid-run and at the end, ``cross_step`` (first eval step with RS
    share >= 0.5, empty if none; tells whether the eval grid resolves the
    transition), local skill b at step 0, mid-run and at the end, ``flip`` (RS
    share at the end < 0.5 at the smallest N and > 0.5 at the largest), the
    run's wall time ``seconds``, its ``cpu_seconds`` and ``eval_seconds`` and
    ``stage1`` (the stage-1 cache: ``hit``, ``miss`` or ``off``; runs of one
    setting share ``<out>/<setting>/.stage1_cache``, so with ``family_size``
    set the N values of a seed pretrain once). Any config field can be a grid key (e.g.
    ``n_heldout``, ``learning_rate``). Also written to ``out_dir/calibration.csv``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = list(grid)
    rows = []
    for values in itertools.product(*(grid[k] for k in keys)):
        knobs = dict(zip(keys, values))
        for seed in seeds:
            cfg = base.replace(**knobs, seed=seed, n_envs=min(n_values))  # n_envs set per run; valid with family_size
            tag = "_".join(f"{k}={v}" for k, v in knobs.items()) + f"_seed={seed}"
            pair = run_pair(cfg, out_dir / tag, n_values)
            ends = {n: float(s.p.iloc[-1]) for n, s in pair.items()}
            flip = ends[min(n_values)] < 0.5 < ends[max(n_values)]
            for n, s in pair.items():
                mid = s.iloc[len(s) // 2]
                rows.append({**knobs, "seed": seed, "N": n, "p_step0": float(s.p.iloc[0]), "p_mid": float(mid.p),
                             "p_end": float(s.p.iloc[-1]), "cross_step": crossing_step(s),
                             "a_step0": float(s.a.iloc[0]), "b_step0": float(s.b.iloc[0]), "b_mid": float(mid.b),
                             "b_end": float(s.b.iloc[-1]), "flip": flip, "seconds": round(s.attrs["seconds"], 1),
                             "cpu_seconds": s.attrs["organisms"].get("cpu_seconds"),
                             "eval_seconds": s.attrs["organisms"].get("eval_seconds"),
                             "stage1": (s.attrs["organisms"].get("stage1") or {}).get("cache")})
            print(json.dumps(rows[-len(pair):], default=float), flush=True)
            pd.DataFrame(rows).to_csv(out_dir / "calibration.csv", index=False)
    return pd.DataFrame(rows)
