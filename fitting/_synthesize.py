"""Synthetic rollout logs sampled from the ODE, with the truth written next to them.

Users check whether a planned experiment can identify what they care about
(e.g. transfer) before spending compute (docs/model.md §6): synthesize the design,
fit it, and see which parameters come back.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from physrl.contract import write_run

from ._engine import TRANSFERS, BatchConfig, simulate, single_thread
from ._options import DEFAULT_TRUTH as DEFAULT_TRUTH

#: number of completions per GRPO group written to the synthetic log
GROUP_SIZE = 8


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def identifiable_truth(truth: dict[str, float], transfer: str) -> dict[str, float]:
    """The true values in the fit's parametrisation (α_z = 1 folded into the time scale).

    Parameters
    ----------
    truth : dict
        Parameters as accepted by :func:`synthesize` (``alpha_z`` may differ from 1).
    transfer : {"none", "homogeneous", "kernel"}

    Returns
    -------
    dict
        ``p0, a0, b0, time_scale, alpha_x, alpha_y`` and the transfer values of
        ``transfer`` (``c_*`` or ``length_scale_*``), plus ``lam`` when non-zero
        and ``gamma`` when it is not the replicator's 1.
    """
    az = truth["alpha_z"]
    out = {k: truth[k] for k in ("p0", "a0", "b0")}
    out.update(time_scale=truth["time_scale"] * az, alpha_x=truth["alpha_x"] / az,
               alpha_y=truth["alpha_y"] / az)
    if transfer == "homogeneous":
        out.update({f"c_{k}": truth[f"c_{k}"] for k in "zxy"})
    elif transfer == "kernel":
        out.update({f"length_scale_{k}": truth[f"length_scale_{k}"] for k in "zxy"})
    if truth.get("lam"):
        out["lam"] = truth["lam"]
    if truth.get("gamma", 1.0) != 1.0:
        out["gamma"] = truth["gamma"]
    return out


def synthesize(out: str | Path, *, n_envs: int = 4, n_heldout: int = 2, seed: int = 0,
               transfer: str = "homogeneous", params: dict[str, float] | None = None,
               steps: int = 200, eval_every: int = 5, rollouts_per_env: int = 256,
               train_rollouts_per_env: int = 0, binary_rewards: bool = True,
               spacing: float = 1.0, run_id: str | None = None, substeps: int = 16,
               observation: dict[str, float] | None = None, dispersion: float = 1.0,
               overwrite: bool = False, gamma_skills: bool = False) -> Path:
    """Write a run directory (docs/rollouts.md) sampled from the ODE, and ``truth.json``.

    Environments sit at coordinates ``(i * spacing,)`` on a line; the first
    ``n_envs`` are trained with w = 1/n_envs (a fixed batch shared
    uniformly), the last ``n_heldout`` are held out (w = 0) and only
    evaluated, which is what identifies transfer (docs/model.md §6). The ODE
    (docs/model.md §2) runs in optimizer-step units with model time
    ``time_scale · step`` and ``substeps`` Euler steps per optimizer step.
    At every eval step each environment gets ``rollouts_per_env`` eval
    rollouts: RS with probability p, reward ~ Bernoulli(a_obs) if RS else
    Bernoulli(b_obs) (with ``binary_rewards=False``: Beta with that mean and
    concentration 10, so rewards are fractional). With ``observation``
    bounds the ODE is the gradient flow of the reward in observed units and
    a_obs = a_lo + (a_hi − a_lo)·a, b_obs likewise (docs/model.md §7); the
    bounds are written into the manifest. With ``dispersion`` φ > 1 every
    (step, env) cell draws its own probabilities from a Beta around the
    ODE's (beta-binomial, intra-class correlation ρ = (φ − 1)/(n − 1)), so
    counts vary φ times more than binomial noise, as RL runs do.

    Parameters
    ----------
    out : str or Path
        Run directory to create (must be empty or absent unless ``overwrite``).
    n_envs, n_heldout : int
        Trained (>= 1) and held-out (>= 0) environments.
    seed : int
        Seed of the sampling noise (the trajectories are deterministic).
    transfer : {"none", "homogeneous", "kernel"}
    params : dict, optional
        Overrides of :data:`DEFAULT_TRUTH` (``p0, a0, b0`` probabilities in
        (0, 1); ``time_scale`` model time per optimizer step; ``alpha_*``
        learnabilities per model time; ``c_*`` in [0, 1];
        ``length_scale_*`` in coordinate units; ``lam`` >= 0; ``gamma`` >= 0,
        the selection-law exponent of docs/model.md §9, 1 = the post's
        replicator, e.g. ``{"gamma": 0.3}`` for logs of the power law).
    steps : int
        Optimizer steps of the run; eval at 0, eval_every, ... <= steps.
    eval_every : int
    rollouts_per_env : int
        Eval rollouts per environment and eval step.
    train_rollouts_per_env : int
        Train rollouts per trained environment and step (0: eval rows only).
    observation : dict, optional
        ``a_lo, a_hi, b_lo, b_hi`` in [0, 1] (lo < hi); default (0, 1).
    dispersion : float
        φ >= 1 of the eval counts (1: binomial).
    binary_rewards : bool
    spacing : float
        Distance between neighbouring environments' coordinates.
    run_id : str, optional
        Default ``synthetic-<seed>``.
    substeps : int
        Euler steps per optimizer step of the generating ODE.
    overwrite : bool
    gamma_skills : bool
        With ``gamma`` != 1: raise the skill terms to the same power
        (the ``power+skills`` law of docs/model.md §9; default off).

    Returns
    -------
    Path
        The run directory (``manifest.json``, ``rollouts/part-00000.parquet``,
        ``truth.json``).

    Raises
    ------
    ValueError
        Unknown parameter name, value out of range, bad sizes or transfer.
    FileExistsError
        ``out`` is a non-empty directory and ``overwrite`` is False.
    """
    truth = dict(DEFAULT_TRUTH)
    unknown = set(params or {}) - set(truth)
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}; known: {sorted(truth)}")
    truth.update({k: float(v) for k, v in (params or {}).items()})
    if transfer not in TRANSFERS:
        raise ValueError(f"transfer must be one of {TRANSFERS}, got {transfer!r}")
    for k in ("p0", "a0", "b0"):
        if not 0 < truth[k] < 1:
            raise ValueError(f"{k} must lie in (0, 1), got {truth[k]}")
    for k in ("c_z", "c_x", "c_y"):
        if not 0 <= truth[k] <= 1:
            raise ValueError(f"{k} must lie in [0, 1], got {truth[k]}")
    for k in ("time_scale", "alpha_z", "alpha_x", "alpha_y", "length_scale_z", "length_scale_x",
              "length_scale_y"):
        if not truth[k] > 0:
            raise ValueError(f"{k} must be > 0, got {truth[k]}")
    if truth["lam"] < 0:
        raise ValueError(f"lam must be >= 0, got {truth['lam']}")
    if not truth["gamma"] >= 0:
        raise ValueError(f"gamma (selection-law exponent) must be >= 0, got {truth['gamma']}")
    if n_envs < 1 or n_heldout < 0 or steps < 0 or eval_every < 1 or rollouts_per_env < 1:
        raise ValueError("need n_envs >= 1, n_heldout >= 0, steps >= 0, eval_every >= 1, rollouts_per_env >= 1")
    bounds = {"a_lo": 0.0, "a_hi": 1.0, "b_lo": 0.0, "b_hi": 1.0}
    unknown = set(observation or {}) - set(bounds)
    if unknown:
        raise ValueError(f"unknown observation bound(s) {sorted(unknown)}; known: a_lo, a_hi, b_lo, b_hi")
    bounds.update({k: float(v) for k, v in (observation or {}).items()})
    for lat in ("a", "b"):
        if not 0 <= bounds[f"{lat}_lo"] < bounds[f"{lat}_hi"] <= 1:
            raise ValueError(f"observation bounds need 0 <= {lat}_lo < {lat}_hi <= 1, got "
                             f"{bounds[f'{lat}_lo']}, {bounds[f'{lat}_hi']}")
    if not dispersion >= 1:
        raise ValueError(f"dispersion must be >= 1, got {dispersion}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty (pass overwrite=True / --overwrite)")

    n_total = n_envs + n_heldout
    w = np.array([1.0 / n_envs] * n_envs + [0.0] * n_heldout)
    coords = (np.arange(n_total, dtype=float) * spacing)[:, None]
    eval_steps = np.arange(0, steps + 1, eval_every)
    train_steps = np.arange(0, steps) if train_rollouts_per_env > 0 else np.array([], int)
    all_steps = np.union1d(eval_steps, train_steps)
    config = BatchConfig(w[None, :], np.ones((1, n_total), bool), coords[None], all_steps)
    full = lambda v: torch.full((1, 1, n_total), float(v), dtype=torch.float64)  # noqa: E731
    phys = {k: full(truth[k]) for k in ("p0", "a0", "b0", "alpha_z", "alpha_x", "alpha_y")}
    phys["time_scale"] = torch.tensor(truth["time_scale"], dtype=torch.float64).reshape(1, 1, 1)
    for k in "zxy":
        phys[f"c_{k}"] = torch.tensor([[truth[f"c_{k}"]]], dtype=torch.float64)
        phys[f"length_scale_{k}"] = torch.tensor([[truth[f"length_scale_{k}"]]], dtype=torch.float64)
    if truth["lam"]:
        phys["lam"] = torch.tensor(truth["lam"], dtype=torch.float64).reshape(1, 1, 1)
    if truth["gamma"] != 1.0:  # the power selection law (docs/model.md §9); 1 is the replicator
        phys["gamma"] = torch.tensor(truth["gamma"], dtype=torch.float64).reshape(1, 1, 1)
    if observation:
        phys.update({k: full(v) for k, v in bounds.items()})
    with single_thread():
        law = "replicator" if truth["gamma"] == 1.0 else "power+skills" if gamma_skills else "power"
        p, a, b = (s[:, 0, 0].numpy() for s in simulate(config, phys, transfer, substeps, selection=law))  # (T, N)
    a = bounds["a_lo"] + (bounds["a_hi"] - bounds["a_lo"]) * a
    b = bounds["b_lo"] + (bounds["b_hi"] - bounds["b_lo"]) * b

    def cell(prob, n):  # the cell's probability: the ODE's, or a Beta draw around it (overdispersion)
        rho = (dispersion - 1) / max(n - 1, 1)
        if rho <= 0:
            return prob
        conc = 1 / min(rho, 0.999) - 1
        prob = min(max(prob, 1e-6), 1 - 1e-6)
        return rng.beta(prob * conc, (1 - prob) * conc)

    rng = np.random.default_rng(seed)
    run_id = run_id or f"synthetic-{seed}"
    env_ids = [f"env-{i:02d}" for i in range(n_total)]
    columns: dict[str, list] = {k: [] for k in ("step", "phase", "env_id", "group_id", "reward", "rs",
                                                  "rs_score")}
    group = 0
    for phase, phase_steps, count, envs in (("train", train_steps, train_rollouts_per_env, range(n_envs)),
                                           ("eval", eval_steps, rollouts_per_env, range(n_total))):
        for s in phase_steps:
            t = int(np.searchsorted(all_steps, s))
            for i in envs:
                rs = rng.random(count) < cell(p[t, i], count)
                n_rs = int(rs.sum())
                mean = np.where(rs, cell(a[t, i], n_rs), cell(b[t, i], count - n_rs))
                if binary_rewards:
                    reward = (rng.random(count) < mean).astype(float)
                else:
                    reward = rng.beta(mean * 10 + 1e-9, (1 - mean) * 10 + 1e-9)
                columns["step"] += [int(s)] * count
                columns["phase"] += [phase] * count
                columns["env_id"] += [env_ids[i]] * count
                columns["group_id"] += list(group + np.arange(count) // GROUP_SIZE)
                group += -(-count // GROUP_SIZE)
                columns["reward"] += reward.tolist()
                columns["rs"] += rs.tolist()
                columns["rs_score"] += np.where(rs, 0.9, 0.1).tolist()
    rows = pd.DataFrame(columns)
    rows.insert(0, "run_id", run_id)
    rows["prompt"] = "synthetic prompt"
    rows["completion"] = np.where(rows["rs"], "synthetic RS completion", "synthetic completion")

    synth_config = {"n_envs": n_envs, "n_heldout": n_heldout, "seed": seed, "transfer": transfer,
                    "steps": steps, "eval_every": eval_every, "rollouts_per_env": rollouts_per_env,
                    "train_rollouts_per_env": train_rollouts_per_env, "binary_rewards": binary_rewards,
                    "spacing": spacing, "substeps": substeps, "p0": truth["p0"], "dispersion": dispersion,
                    "selection": law}
    manifest = {
        "run_id": run_id, "created": _now(), "finished": _now(), "status": "finished",
        "seed": seed, "p0": truth["p0"], "steps": steps,
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__},
        "environments": [{"env_id": e, "index": i, "coordinates": coords[i].tolist(), "w": float(w[i]),
                          **({"observation": dict(bounds)} if observation else {})}
                         for i, e in enumerate(env_ids)],
        "classifier": {"name": "synthetic-truth", "version": "1"},
        "model": {"name": "toy-ode (fitting.synthesize)"},
        "synthesize": {"config": synth_config, "generator": "physrl.fitting.synthesize"},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_run(out, rows, manifest)
    truth_doc = {"run_id": run_id, "transfer": transfer, "params": truth, "observation": bounds, "selection": law,
                 "dispersion": dispersion,
                 "identifiable": identifiable_truth(truth, transfer),
                 "note": "identifiable: the fit's parametrisation (alpha_z = 1, time_scale in model time "
                         "per optimizer step); p0 is this run's prior (p0_r<i> in a fit)"}
    (out / "truth.json").write_text(json.dumps(truth_doc, indent=2, sort_keys=True))
    return out
