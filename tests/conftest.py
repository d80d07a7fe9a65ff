"""Shared fixtures: a scaling experiment run end to end on ODE-sampled stand-in runs.

The organisms are replaced by a trainer that samples the toy ODE (``fitting.synthesize``)
with a known law: at 150 steps the protocol N* is 8, 4, 2 at p0 = 0.05, 0.1, 0.2 on the integers
(N* 7.4, 3.1, 1.3 interpolated on log N: slope −1.25). Each seed perturbs the prior
(p0 · e^{0.3 z}), so seeds disagree near N*. One run per test session serves the scaling
tests and the browser check of its report.
"""

import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from physrl import fitting
from physrl.experiment import runs as _runs
from physrl.experiment import run_experiment
from physrl.experiment.config import ExperimentConfig

#: words that must never reach a reader of the report or the CLI (a missing value said as a bound or "–")
NAN_OR_NONE = re.compile(r"\b(nan|NaN|None|null|inf)\b")


def visible_text(html_doc: str) -> str:
    """A report's text as a reader sees it: no style, no embedded images, no tags, entities decoded."""
    doc = re.sub(r"<style>.*?</style>", " ", html_doc, flags=re.S)
    doc = re.sub(r"src='data:[^']*'", "", doc)
    doc = re.sub(r"<[^>]+>", " ", doc)
    return re.sub(r"\s+", " ", html.unescape(doc))


TRUTH = {"a0": 0.6, "b0": 0.3, "time_scale": 1.0, "alpha_x": 1.0, "alpha_y": 0.7,
         "c_z": 0.9, "c_x": 0.9, "c_y": 0.0}
STEPS = 150


def scaling_config(**changes) -> ExperimentConfig:
    base = dict(
        name="scaling-synthetic", p0=[0.05, 0.1, 0.2], seeds=[0, 1, 2], calibration_seeds=[10],
        n_envs_by_p0={"0.05": [4, 8, 16], "0.1": [2, 4, 8], "0.2": [1, 2, 4]},
        calibration=[{"n_envs": 1, "p0": 0.1, "n_held_out": 2}, {"n_envs": 4, "p0": 0.2, "n_held_out": 2}],
        family_heldout=1, vary_family_seed=True, budgets=[100], bootstrap=200, prediction_draws=60,
        n_star_max=32, organism={"max_steps": STEPS, "eval_every": 10},
        executor={"engine": "local", "max_workers": 1})
    base.update(changes)
    return ExperimentConfig.from_dict(base)


def ode_trainer(calls: list):
    """A stand-in for ``_runs.train_one``: sample the ODE for the planned organism."""
    from physrl.organisms import OrganismConfig

    def train_one(organism: dict, run_dir: str, resume: bool) -> str:
        cfg = OrganismConfig(**{**organism, "progress": False})
        out = Path(run_dir)
        calls.append((out.name, (out.parent.parent / "predictions.json").exists()))
        z = np.random.default_rng([cfg.seed, 99]).standard_normal()
        p0 = float(np.clip(cfg.p0 * math.exp(0.3 * z), 1e-3, 0.9))
        fitting.synthesize(out, n_envs=cfg.n_envs, n_heldout=cfg.n_heldout, seed=cfg.seed * 1000 + cfg.n_envs,
                           params={**TRUTH, "p0": p0}, steps=cfg.max_steps, eval_every=cfg.eval_every,
                           rollouts_per_env=32, run_id=out.name, overwrite=True)
        manifest = json.loads((out / "manifest.json").read_text())
        (out / "manifest.json").write_text(json.dumps({**manifest, "organisms": {"config": cfg.to_dict()}}))
        return str(out)

    return train_one


@pytest.fixture(scope="session")
def synthetic_scaling(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    calls = []
    mp = pytest.MonkeyPatch()
    mp.setattr(_runs, "train_one", ode_trainer(calls))
    try:
        summary = run_experiment(scaling_config(), out, progress=False)
    finally:
        mp.undo()
    return out, summary, calls


# ---- log contract and organisms ----------------------------------------------------------------------
@pytest.fixture
def run_dir(tmp_path):
    """A small synthesized run (docs/rollouts.md): 2 trained envs + 1 held out, 20 steps, eval every 10,
    16 eval rollouts per env and step, 2 train rollouts per trained env and step (224 rows), seed 4."""
    return fitting.synthesize(tmp_path / "run", n_envs=2, n_heldout=1, steps=20, eval_every=10,
                              rollouts_per_env=16, train_rollouts_per_env=2, seed=4)


@pytest.fixture
def stop_after():
    """``stop_after(step)``: a ``recorder_hook`` for ``organisms.train`` adding a callback that raises
    KeyboardInterrupt once ``step`` optimizer steps are done (a simulated Ctrl-C, injected by the test)."""
    def make(step):
        from transformers import TrainerCallback

        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step >= step:
                    raise KeyboardInterrupt(f"simulated interrupt after step {state.global_step}")

        return lambda recorder, trainer: trainer.add_callback(Stop())

    return make
