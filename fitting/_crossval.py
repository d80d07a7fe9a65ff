"""Leave-one-run-out cross-validation of the fit (docs/model.md §6).

For each run, fit the others and predict it: the honest check for users with
few runs, and it tells which runs the theory fails on.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import pandas as pd

from ._fit import InsufficientData, fit
from physrl.contract import Run, load_runs

from ._predict import predict


@dataclass
class CrossValidation:
    """Leave-one-run-out results.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per held-out run: ``run_id, source`` (directory name), ``n_envs, p0, converged,
        end_observed, end_predicted, end_right, rmse_p, coverage_p,
        coverage_all, dispersion, seconds, error``. ``end_*`` are the mean
        RS share over the trained envs at the last step; ``coverage_*`` the
        share of eval points inside the ``level`` predictive band.
    level : float
    notes : list of str
    """

    table: pd.DataFrame
    level: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"level": self.level, "notes": self.notes,
                "runs": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                          for k, v in row.items()} for row in self.table.to_dict(orient="records")]}


def cross_validate(runs, *, level: float = 0.9, n_samples: int = 100, progress: bool = False,
                   seed: int = 0, **fit_kwargs) -> CrossValidation:
    """Leave each run out, fit the rest, predict it.

    Parameters
    ----------
    runs : list of Run or paths
        At least two runs.
    level : float
        Predictive band level for the coverage column.
    n_samples : int
        Parameter draws per prediction.
    progress : bool
        One line per fold on stderr (and the fit's own bar).
    seed : int
    **fit_kwargs
        Passed to :func:`fitting.fit` (transfer, max_nfev, ...).

    Returns
    -------
    CrossValidation

    Raises
    ------
    ValueError
        Fewer than two runs.
    """
    if runs and not isinstance(runs[0], Run):
        runs = load_runs(runs)
    if len(runs) < 2:
        raise ValueError(f"cross-validation needs at least two runs, got {len(runs)}")
    rows = []
    for i, held in enumerate(runs):
        rest = [r for j, r in enumerate(runs) if j != i]
        row = {"run_id": held.run_id, "source": held.source.name, "n_envs": sum(e.w > 0 for e in held.environments), "p0": None,
               "converged": False, "end_observed": None, "end_predicted": None, "end_right": None,
               "rmse_p": None, "coverage_p": None, "coverage_all": None, "dispersion": None, "seconds": None,
               "error": ""}
        if progress:
            print(f"cross-validation {i + 1}/{len(runs)}: fit {len(rest)} runs, predict {held.run_id}",
                  file=sys.stderr)
        try:
            res = fit(rest, progress=progress, seed=seed, **fit_kwargs)
        except InsufficientData as exc:
            row["error"] = str(exc)
            rows.append(row)
            continue
        pred = predict(res, held, n_samples=n_samples, level=level, seed=seed, n_star=False)
        m = pred.metrics
        row.update(p0=pred.p0, converged=res.converged, end_observed=m.end_state.observed_mean_p,
                   end_predicted=m.end_state.predicted_mean_p, end_right=m.end_state.agree, rmse_p=m.rmse_p,
                   coverage_p=m.coverage.get("p"), coverage_all=m.coverage.get("all"),
                   dispersion=res.dispersion, seconds=res.seconds)
        rows.append(row)
    notes = []
    if any(not r["converged"] for r in rows):
        notes.append("some folds did not converge: their predictions are not an answer")
    return CrossValidation(pd.DataFrame(rows), level, notes)
