"""Stage 3 of the experiment, fit & freeze: what the calibration fit says about every sweep cell, written
(and hashed) before any sweep run is trained or read (scored against the outcomes later, in
:mod:`physrl.experiment.analysis`).

Order, enforced by :func:`physrl.experiment.run_experiment`: calibration runs
trained → ODE fitted on them → ``predictions.json`` written here (its sha256
and write time in ``preregistration.json``) → sweep runs trained and read. A
rerun verifies the frozen file's hash and never rewrites it; a folder whose
sweep runs exist without frozen predictions is refused.

Each sweep cell (p0, N, budget) gets:

- the predicted final RS share on its N trained environments: the fitted ODE
  under the organisms' protocol (N environments sharing the batch, w = 1/N,
  ``budget`` optimizer steps; :func:`protocol_final_p`) at
  the nominal p0, with a 95% band over parameter draws from the fit's
  covariance plus the eval's sampling noise (binomial over the cell's eval
  rollouts, inflated by the fit's dispersion φ when the fit reports one);
- the predicted P(RS wins) = the share of those predictive draws whose
  observed share exceeds the threshold, Jeffreys-smoothed ((k + ½)/(D + 1))
  so that no forecast is exactly 0 or 1.

N*(p0) is predicted per draw as the first N (continuous, interpolated on log
N) at which the final share passes the threshold; the predicted slope of log
N* on log p0 comes with its interval over the same draws.

The fitted ODE under the organisms' protocol (:func:`protocol_final_p`) and the demo-style predicted N*
with an interval over parameter draws (:func:`predicted_n_star`) live here too: they are the fit's
predictions, whichever stage reads them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from physrl import fitting, sim
from physrl.contract import atomic_write_bytes

from .scaling import quantile_interval, slope_with_interval

PREDICTIONS_FILE = "predictions.json"
LOCK_FILE = "preregistration.json"


class PreregistrationError(ValueError):
    """The frozen predictions are missing, altered, or do not cover the planned sweep."""


@dataclass
class Preregistration:
    """Where the frozen predictions are and how to check them.

    Attributes
    ----------
    file : str
        Path of ``predictions.json`` relative to the experiment folder.
    sha256 : str
        Hex digest of its bytes.
    written_at : str
        UTC time it was written (ISO 8601, microseconds).
    sweep_logs_read_after : bool or None
        True once every sweep run is known to have started after
        ``written_at`` (from the manifests' ``created`` times); None before
        the sweep is read.
    late_runs : list of str
        Sweep runs whose manifest predates the frozen file (empty when the
        order held).
    """

    file: str
    sha256: str
    written_at: str
    sweep_logs_read_after: bool | None = None
    late_runs: tuple = ()

    def to_dict(self) -> dict:
        out = asdict(self)
        out["late_runs"] = list(self.late_runs)
        return out


def _dispersion(fit_result) -> float:
    """The fit's overdispersion φ (Pearson χ²/dof, docs/model.md §7), floored at 1; 1 when it is undefined."""
    phi = fit_result.dispersion
    return max(1.0, float(phi)) if math.isfinite(phi) else 1.0


def predict_sweep(fit_result, grid: dict[float, list[int]], budgets: list[int], threshold: float, *,
                  eval_rollouts_per_env: int, n_star_max: int, n_draws: int = 200, seed: int = 0,
                  level: float = 0.95, done: Callable[[int], object] | None = None) -> dict:
    """Every sweep cell's frozen prediction, N*(p0) and the scaling slope.

    Parameters
    ----------
    fit_result : fitting.FitResult
        The calibration fit (homogeneous or no transfer, shared priors).
    grid : dict
        p0 -> the N values swept there.
    budgets : list of int
        Step budgets (optimizer steps) at which end states are read.
    threshold : float
        RS share above which RS wins, in (0, 1).
    eval_rollouts_per_env : int
        Eval rollouts per trained environment at one eval step (the eval's
        sampling noise: the observed share averages N times this many).
    n_star_max : int
        Largest N searched for N*.
    n_draws : int
        Parameter draws D.
    seed : int
    level : float
    done : callable(int), optional
        Called with 1 after each of the ``2 × len(budgets) × len(grid)`` calls of the fit under the
        protocol (per budget and p0: the N* search, then the cells), e.g. a progress bar's ``update``.

    Returns
    -------
    dict
        ``cells`` (list of {p0, n_envs, budget, p_win, final_p, final_p_band_95,
        final_p_median}), ``n_star`` (list of {p0, budget, n_star, interval_95,
        share_above_n_max}), ``slope`` per budget ({value, interval_95, ...}),
        ``fit`` (converged, dispersion) and ``method``.

    Raises
    ------
    ValueError
        If the fit is not of a kind the protocol can simulate.
    """
    rng = np.random.default_rng(seed)
    phi = _dispersion(fit_result)
    n_search = np.unique(np.concatenate([np.geomspace(1, n_star_max, 97), np.arange(1, 17)]))
    cells, n_stars, slopes = [], [], {}
    for budget in budgets:
        per_p0 = {}
        for p0, ns in grid.items():
            # first crossing on the grid, log-linear between the bracketing N; "none up to the
            # grid's end" ranks as +inf for the quantiles (sim's one N* search, method "grid")
            draws = sim.find_critical_diversity(
                lambda n, p0=p0, budget=budget: protocol_final_p(fit_result, p0, n[0], budget, n_draws=n_draws,
                                                                 seed=seed),
                batch_shape=(n_draws + 1,), method="grid", n_grid=n_search, threshold=threshold).ranked()
            per_p0[p0] = draws
            if done is not None:
                done(1)
            n_stars.append({"p0": p0, "budget": budget,
                            "n_star": float(draws[0]) if np.isfinite(draws[0]) else None,
                            "interval_95": quantile_interval(draws[1:], level),
                            "share_above_n_max": float(np.mean(~np.isfinite(draws[1:]))),
                            "n_max": n_star_max})
            at_cells = protocol_final_p(fit_result, p0, ns, budget, n_draws=n_draws, seed=seed)  # (D+1, len(ns))
            if done is not None:
                done(1)
            for j, n in enumerate(ns):
                trials = max(1.0, n * eval_rollouts_per_env / phi)
                observed = rng.binomial(int(round(trials)), np.clip(at_cells[1:, j], 0, 1)) / round(trials)
                k = float(np.sum(observed > threshold))
                cells.append({"p0": p0, "n_envs": int(n), "budget": int(budget),
                              "p_win": (k + 0.5) / (len(observed) + 1.0),
                              "final_p": float(at_cells[0, j]),
                              "final_p_median": float(np.median(observed)),
                              "final_p_band_95": quantile_interval(observed, level)})
        p0s = sorted(per_p0)
        point = [per_p0[p][0] for p in p0s]
        reps = np.column_stack([per_p0[p][1:] for p in p0s])
        slopes[str(budget)] = slope_with_interval(p0s, point, reps, "parameter draws of the calibration fit",
                                                  level).to_dict()
    return {
        "cells": cells, "n_star": n_stars, "slope": slopes,
        "fit": {"converged": fit_result.converged, "dispersion": phi,
                "unidentified": list(fit_result.unidentified)},
        "method": ("fitted ODE under the organisms' protocol (N envs sharing the batch, w = 1/N, `budget` "
                   f"optimizer steps) at the nominal p0; {n_draws} draws from the fit's covariance "
                   f"(unidentified parameters over their range); observed share ~ Binomial(N x "
                   f"{eval_rollouts_per_env} / phi, p) / (N x {eval_rollouts_per_env} / phi) with phi = {phi:.3g}; "
                   "p_win = (draws above threshold + 1/2) / (draws + 1)"),
        "threshold": threshold,
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def frozen(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` already holds frozen predictions."""
    return (Path(out_dir) / PREDICTIONS_FILE).exists()


def check_order(out_dir: str | Path, sweep_run_dirs) -> None:
    """Refuse a folder where sweep runs exist but no predictions were frozen before them.

    Raises
    ------
    PreregistrationError
    """
    if frozen(out_dir):
        return
    started = [Path(d).name for d in sweep_run_dirs if Path(d).exists() and any(Path(d).iterdir())]
    if started:
        raise PreregistrationError(
            f"{out_dir} holds sweep runs ({', '.join(started[:3])}{', ...' if len(started) > 3 else ''}) but no "
            f"{PREDICTIONS_FILE}: predictions can no longer be frozen before the sweep; use a new --out folder")


def check_calibration(out_dir: str | Path, calibration_runs: list[str]) -> None:
    """Refuse a folder whose frozen predictions came from other calibration runs than the config plans.

    A rerun refits the planned calibration runs and reports that fit beside the frozen predictions; with
    another calibration list (seen: a rerun with ``calibration`` changed from N = 1 to N = 2 trained the
    new calibration run after the sweep, reported its fit and its protocol N*, and scored the old fit's
    frozen forecasts) the report would mix two fits. No-op when nothing is frozen yet.

    Raises
    ------
    PreregistrationError
        The frozen file's ``context.calibration_runs`` differs from ``calibration_runs`` (or the file
        fails :func:`verify`).
    """
    if not frozen(out_dir):
        return
    _, predictions = verify(out_dir)
    used = (predictions.get("context") or {}).get("calibration_runs")
    if used is not None and sorted(used) != sorted(calibration_runs):
        raise PreregistrationError(f"the frozen predictions in {Path(out_dir) / PREDICTIONS_FILE} came from the "
                                   f"calibration runs {used}, this config calibrates on {calibration_runs}: their "
                                   "fit would be reported beside predictions it did not make; use a new --out folder")


def freeze(out_dir: str | Path, payload: dict) -> Preregistration:
    """Write ``predictions.json`` once (atomically) and record its sha256 and write time.

    The hash record is written (atomically) before the predictions are renamed into place, so a
    kill at any moment leaves either no ``predictions.json`` (a rerun freezes afresh: no sweep run
    exists yet) or one whose record exists, never a frozen file without its record (which would
    refuse the folder for good, calibration runs included).

    Raises
    ------
    PreregistrationError
        If predictions are already frozen there (use :func:`verify`).
    """
    out = Path(out_dir)
    path = out / PREDICTIONS_FILE
    if path.exists():
        raise PreregistrationError(f"{path} is frozen already; it is verified, never rewritten")
    written_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    doc = {"written_at": written_at, **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(fitting.json_safe(doc), indent=2))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    reg = Preregistration(PREDICTIONS_FILE, _sha256(tmp), written_at)
    atomic_write_bytes(out / LOCK_FILE, json.dumps({"file": reg.file, "sha256": reg.sha256,
                                                    "written_at": reg.written_at}, indent=2).encode())
    tmp.replace(path)
    return reg


def verify(out_dir: str | Path) -> tuple[Preregistration, dict]:
    """Check the frozen file against its recorded hash; returns the record and the predictions.

    Raises
    ------
    PreregistrationError
        Missing record, or a file whose bytes changed since it was frozen.
    """
    out = Path(out_dir)
    lock = out / LOCK_FILE
    if not lock.exists() and not (out / PREDICTIONS_FILE).exists():
        raise PreregistrationError(f"nothing is frozen in {out} (no {PREDICTIONS_FILE}): train the experiment first")
    if not lock.exists():
        raise PreregistrationError(f"{out / PREDICTIONS_FILE} exists without its hash record {lock}; "
                                   "cannot verify it was frozen before the sweep: use a new --out folder")
    try:
        record = json.loads(lock.read_text())
        record["file"], record["sha256"], record["written_at"]
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError) as err:
        raise PreregistrationError(f"{lock} is not a hash record ({type(err).__name__}: {err}); cannot verify "
                                   f"{out / PREDICTIONS_FILE}: use a new --out folder") from None
    if not (out / record["file"]).exists():
        raise PreregistrationError(f"{out / record['file']} is missing though {lock} records it: the frozen "
                                   "predictions are lost; use a new --out folder")
    digest = _sha256(out / record["file"])
    if digest != record["sha256"]:
        raise PreregistrationError(f"{out / record['file']} changed after it was frozen (sha256 {digest[:12]}… "
                                   f"!= recorded {record['sha256'][:12]}…); the experiment refuses to score it")
    return Preregistration(record["file"], record["sha256"], record["written_at"]), \
        json.loads((out / record["file"]).read_text())


def check_coverage(predictions: dict, grid: dict[float, list[int]], budgets: list[int], threshold: float) -> None:
    """Every planned (p0, N, budget) must have a frozen prediction at the same threshold.

    Raises
    ------
    PreregistrationError
    """
    have = {(round(c["p0"], 12), c["n_envs"], c["budget"]) for c in predictions["cells"]}
    missing = [(p0, n, b) for p0, ns in grid.items() for n in ns for b in budgets
               if (round(p0, 12), n, b) not in have]
    if missing or predictions.get("threshold") != threshold:
        what = (f"cells {missing[:4]}{' ...' if len(missing) > 4 else ''} (p0, N, budget)" if missing
                else f"threshold {predictions.get('threshold')} != {threshold}")
        raise PreregistrationError(f"the frozen predictions do not cover this config: {what}; "
                                   "use a new --out folder for a changed sweep")


FIT_DRIFT_RTOL = 1e-3  # a refit this close to the frozen one is the same fit (BLAS and optimizer noise)


def fit_drift(predictions: dict, fit_result, rtol: float = FIT_DRIFT_RTOL) -> dict:
    """Compare a rerun's calibration fit with the fit that made the frozen predictions.

    A rerun of ``physrl experiment`` refits the calibration runs (their logs
    are unchanged); if the fitting code changed since the freeze, the report
    would otherwise show a new fit beside predictions an old fit made.

    Parameters
    ----------
    predictions : dict
        The frozen ``predictions.json``; its ``context.fit_parameters`` (name ->
        value) were recorded at the freeze.
    fit_result : physrl.fitting.FitResult
        The fit of this run.
    rtol : float
        Relative tolerance (absolute 1e-6 for values near 0).

    Returns
    -------
    dict
        ``{"checked": bool, "matches": bool | None, "differing": {name: [frozen, now]}}``;
        ``checked`` is False (``matches`` None) when the frozen file has no
        recorded parameters (written before they were recorded).
    """
    recorded = (predictions.get("context") or {}).get("fit_parameters")
    if not recorded:
        return {"checked": False, "matches": None, "differing": {}}
    now = {n: e.value for n, e in fit_result.estimates.items()}
    differing = {}
    for name in sorted(set(recorded) | set(now)):
        a, b = recorded.get(name), now.get(name)
        if a is None or b is None or not math.isclose(float(a), float(b), rel_tol=rtol, abs_tol=1e-6):
            differing[name] = [a, b]
    return {"checked": True, "matches": not differing, "differing": differing}


def _created(manifest: dict) -> datetime | None:
    text = manifest.get("created")
    if not text:
        return None
    try:
        stamp = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def check_read_after(reg: Preregistration, sweep_run_dirs) -> Preregistration:
    """Record whether every sweep run started (manifest ``created``) after the predictions were frozen.

    Times are compared at whole seconds (manifests store seconds).
    """
    written = datetime.fromisoformat(reg.written_at).replace(microsecond=0)
    late = []
    for d in sweep_run_dirs:
        manifest = json.loads((Path(d) / "manifest.json").read_text())
        created = _created(manifest)
        if created is None or created.replace(microsecond=0) < written:
            late.append(Path(d).name)
    return Preregistration(reg.file, reg.sha256, reg.written_at, not late, tuple(late))


# ---- the fit under the organisms' protocol ----------------------------------------------------------------------
def protocol_final_p(fit_result, p0: float, n_values, max_steps: int, *, n_draws: int = 64,
                     seed: int = 0) -> np.ndarray:
    """Mean p after ``max_steps`` optimizer steps of N envs sharing the batch (w = 1/N).

    The fitted ODE under the organisms' protocol, its observation model
    included: :func:`physrl.fitting.protocol_final_p` (docs/model.md §3, §7).

    Returns
    -------
    ndarray, shape (n_draws + 1, len(n_values))
        Final mean p; row 0 uses the point estimate, the others parameter
        draws from the fit's covariance.

    Raises
    ------
    ValueError
        For a kernel fit or per-environment parameters (no single N-env
        protocol follows from them).
    """
    return fitting.protocol_final_p(fit_result, p0, n_values, max_steps, n_draws=n_draws, seed=seed)


def predicted_n_star(fit_result, p0_values, max_steps: int, n_max: int, threshold: float, *,
                     n_draws: int = 64, level: float = 0.9, seed: int = 0) -> pd.DataFrame:
    """Predicted N*(p0) under the organisms' protocol, with an interval over parameter draws.

    The search is :func:`physrl.sim.find_critical_diversity` (method
    ``"scan"``: every N from 1 to ``n_max``, the first whose protocol final
    share passes the threshold; exact without assuming the share rises with N)
    on :func:`protocol_final_p`.

    Returns a table with columns ``p0, n_star, lower, upper, share_above_n_max,
    status``; ``n_star`` (and an interval end) is NaN when even ``n_max``
    environments do not pass the threshold, i.e. N* > n_max (``status``
    ``above_n_max``); ``share_above_n_max`` is the share of parameter draws
    for which that happens.
    """
    rows = []
    for p0 in p0_values:
        res = sim.find_critical_diversity(
            lambda n, p0=p0: protocol_final_p(fit_result, p0, n[0], max_steps, n_draws=n_draws, seed=seed),
            batch_shape=(n_draws + 1,), method="scan", n_max=n_max, threshold=threshold)
        draws = res.ranked()[1:]        # "never passed" ranks above every N searched (+inf)
        tail = (1 - level) / 2
        lo, hi = (np.quantile(draws, [tail, 1 - tail], method="nearest") if draws.size
                  else (math.nan, math.nan))
        rows.append({"p0": float(p0), "n_star": float(res.n_star[0]),
                     "lower": float(lo) if np.isfinite(lo) else math.nan,
                     "upper": float(hi) if np.isfinite(hi) else math.nan,
                     "share_above_n_max": float(np.mean(~np.isfinite(draws))) if draws.size else math.nan,
                     "status": res.status[0].value})
    return pd.DataFrame(rows)
