"""A saved fit read back: :meth:`FitResult.load` rebuilds a :class:`FitResult` from ``fit.json``.

The fit's layout (parameter records, index onto runs and environments, observation bounds, training
weights) is rebuilt from the fitted runs' logs, whose resolved paths ``fit.json`` records; every number
the fit estimated (values, vary flags, identified flags and reasons, the dispersion-scaled covariance,
the dispersion, the step-0 measurements) is read from the file, never re-estimated, so predictions from
a loaded fit equal those of the fit that wrote it (issue 18 item 9). JSON writes floats with ``repr``,
which reads back bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lmfit
import numpy as np

from physrl.contract import Run, load_runs

from ._fit import FitDiagnostics, FitResult, ParameterEstimate, StartRecord
from ._observations import observations
from ._problem import FitSpec, Measurement, Problem


def _float(x) -> float:
    return math.nan if x is None else float(x)


def _runs(doc: dict, runs, where: Path) -> list[Run]:
    """The fitted runs, in the fit's order: ``runs`` if given, else loaded from the recorded paths."""
    wanted = [r["run_id"] for r in doc["runs"]]
    if runs is None:
        sources = list(dict.fromkeys(r.get("path") or r["source"] for r in doc["runs"]))
        missing = [s for s in sources if not Path(s).exists()]
        if missing:
            raise FileNotFoundError(f"{where}: the fitted runs' logs are needed to rebuild the fit's layout and "
                                    f"are not at {', '.join(missing)} (pass them as FitResult.load(path, runs=...))")
        runs = load_runs(sources)
    elif runs and not isinstance(runs[0], Run):
        runs = load_runs(runs)
    by_id = {r.run_id: r for r in runs}
    absent = [r for r in wanted if r not in by_id]
    if absent:
        raise ValueError(f"{where}: fitted runs {absent} are not among the runs given")
    return [by_id[r] for r in wanted]


def _estimate(name: str, entry: dict, problem: Problem) -> ParameterEstimate:
    par = problem.params[name]
    held = entry.get("measurement")
    measurement = None
    if held is not None:
        measurement = (Measurement("beta", held["alpha"], held["beta"]) if held["distribution"] == "beta"
                       else Measurement("normal", held["mean"], held["sd"]))
    return ParameterEstimate(name, float(entry["value"]), entry["stderr"], bool(entry["identified"]),
                             bool(entry["vary"]), entry["reason"] or "", bool(entry["at_bound"]), entry["meaning"],
                             problem.info[name], (par.min, par.max), entry["profile"], measurement)


def _diagnostics(d: dict) -> FitDiagnostics:
    starts = [StartRecord(s["label"], _float(s["deviance"]), s["converged"], s["nfev"], s["message"],
                          {k: _float(v) for k, v in s["values"].items()}) for s in d["starts"]]
    return FitDiagnostics(d["converged"], d["status"], d["message"], d["nfev"], d["jacobians"], d["max_nfev"],
                          starts, d["n_at_best"], {k: tuple(map(_float, v)) for k, v in d["spread"].items()},
                          _float(d["deviance"]), _float(d["penalty"]), _float(d["pearson_chi2"]), d["dof"],
                          _float(d["dispersion"]), {k: _float(v) for k, v in d["dispersion_used"].items()},
                          {k: _float(v) for k, v in d["component_dispersion"].items()}, d["rejected"],
                          d["nonfinite"], d.get("jacobian_fallbacks", 0), d.get("jacobian_walled", 0),
                          _float(d["seconds"]))


def load_fit(path: str | Path, runs=None) -> FitResult:
    """Read a fit written by :meth:`FitResult.save` (a ``fit.json`` file or the folder holding it).

    Parameters
    ----------
    path : str or Path
        ``fit.json`` or its folder (``physrl fit --out``).
    runs : list of Run or paths, optional
        The fitted runs, when their logs no longer sit at the paths ``fit.json`` records.

    Returns
    -------
    FitResult
        With the saved values, flags, covariance and diagnostics; ``result`` holds the parameters only
        (no optimizer history: ``report()``'s lmfit section is not available).

    Raises
    ------
    FileNotFoundError
        No fit.json, or the fitted runs' logs are missing.
    ValueError
        A fit.json without the covariance (written before it was saved) or runs that do not match.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "fit.json"
    doc = json.loads(path.read_text())
    if "covariance" not in doc:
        raise ValueError(f"{path}: no covariance in this fit.json (written by an older physrl); refit to use it")
    spec_doc = dict(doc["spec"])
    spec = FitSpec(**{**spec_doc, "phases": tuple(spec_doc["phases"])})
    fitted = _runs(doc, runs, path)
    problem = Problem.build(fitted, observations(fitted), spec)
    saved = doc["params"]
    if set(saved) != set(problem.params):
        raise ValueError(f"{path}: the runs give parameters {sorted(problem.params)}, the file {sorted(saved)}")
    for name, entry in saved.items():
        problem.params[name].set(value=float(entry["value"]), vary=bool(entry["vary"]))
    d = doc["diagnostics"]
    problem.weights = {c: 1.0 / math.sqrt(_float(v)) for c, v in d["dispersion_used"].items()}
    result = lmfit.minimizer.MinimizerResult(params=problem.params.copy(), var_names=list(doc["covariance"]["names"]))
    cov = np.array([[_float(v) for v in row] for row in doc["covariance"]["matrix"]], dtype=float).reshape(
        len(result.var_names), len(result.var_names))
    estimates = {name: _estimate(name, saved[name], problem) for name in problem.names}
    fit = FitResult(problem, result, estimates, cov, list(result.var_names), _float(doc["loglik"]),
                    _float(doc["aic"]), _float(doc["bic"]), int(doc["n_data"]), _float(doc["seconds"]), fitted,
                    _diagnostics(d), list(doc["notes"]), doc.get("emcee"))
    return fit
