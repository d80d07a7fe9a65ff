"""fitting: estimate the toy model's parameters from rollout logs and test its predictions.

Reads only the log contract (```docs/rollouts.md```); never imports
``organisms``. Public surface (re-exported from small private modules):

- logs (from the contract module :mod:`physrl.contract`): :func:`load_runs`,
  :func:`read_table`, :class:`Run`, :class:`Manifest`, :class:`Environment`,
  :class:`MeasuredPrior`, :class:`LogValidationError`
- observations: :func:`observations`, :func:`jeffreys_interval`
- synthetic logs: :func:`synthesize`, :data:`DEFAULT_TRUTH`
- the fit: :func:`fit`, :func:`compare`, :class:`FitResult`, :class:`FitDiagnostics`,
  :class:`ParameterEstimate`, :class:`ParamInfo`, :class:`FitSpec`, :class:`InsufficientData`
- prediction check: :func:`predict`, :func:`in_sample`, :class:`Prediction`,
  :class:`PredictionMetrics`, :func:`save_prediction`, :func:`sample_parameters`
  (figures in ``fitting._figures``)
- protocol: :func:`protocol_final_p`, :func:`critical_diversity`
- leave-one-run-out: :func:`cross_validate`, :class:`CrossValidation`
- early warning (a run's end state from its first steps, docs/forecast.md): :func:`forecast`,
  :class:`Forecast`, :class:`EndForecast`, :class:`PopulationPrior`, :func:`fit_population`, :class:`RunFit`;
  a run's RS share and end state: :func:`share_curve`, :func:`end_share`, :func:`budget_of`,
  :func:`nominal_prior`, :func:`stage1_model`; each stage-1 model's observation floor measured at its
  step 0: :func:`stage1_floors`, :class:`Stage1Floor`
- takeoff (issue 19's selection law, measured): :func:`takeoff_rate`, :class:`TakeoffRate`,
  :func:`trained_eval_counts`, :func:`selection_exponent`, :class:`SelectionExponent`

Names are imported on first use (PEP 562, as in ``physrl.organisms``), so
``import physrl.fitting`` and ``physrl.fitting.cli`` load without torch, lmfit
or pandas (``physrl fit --help`` starts in a fraction of a second).

Room: fitting; may import: contract, sim and its own room.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from physrl._util.lazy import lazy_exports

#: public name -> the module that owns it (relative: a private module of this package)
_EXPORTS = {
    "CrossValidation": "_crossval", "cross_validate": "_crossval",
    "FitDiagnostics": "_fit", "FitResult": "_fit", "InsufficientData": "_fit", "ParameterEstimate": "_fit",
    "compare": "_compare", "fit": "_fit",
    "Forecast": "_forecast", "forecast": "_forecast", "EndForecast": "_forecast_baselines",
    "budget_of": "_endstate", "end_share": "_endstate", "nominal_prior": "_endstate", "share_curve": "_endstate",
    "stage1_model": "_endstate",
    "PopulationPrior": "_population", "RunFit": "_population", "fit_population": "_population",
    "json_safe": "_json", "write_json": "_json", "write_text": "_json",
    "Environment": "physrl.contract", "LogValidationError": "physrl.contract", "Manifest": "physrl.contract",
    "MeasuredPrior": "physrl.contract", "Run": "physrl.contract", "jeffreys_interval": "physrl.contract",
    "load_runs": "physrl.contract", "read_table": "physrl.contract",
    "TRANSFERS": "_options", "DEFAULT_TRUTH": "_options",
    "observations": "_observations",
    "FitSpec": "_problem", "ParamInfo": "_problem",
    "Stage1Floor": "_step0", "stage1_floors": "_step0",
    "CriticalDiversity": "_protocol", "critical_diversity": "_protocol", "protocol_final_p": "_protocol",
    "identifiable_truth": "_synthesize", "synthesize": "_synthesize",
    "Prediction": "_predict", "PredictionMetrics": "_predict", "in_sample": "_predict", "predict": "_predict",
    "save_prediction": "_predict", "sample_parameters": "_draws",
    "SelectionExponent": "_takeoff", "TakeoffRate": "_takeoff", "selection_exponent": "_takeoff",
    "takeoff_rate": "_takeoff", "trained_eval_counts": "_takeoff",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ._crossval import CrossValidation, cross_validate
    from ._compare import compare
    from ._fit import FitDiagnostics, FitResult, InsufficientData, ParameterEstimate, fit
    from ._endstate import budget_of, end_share, nominal_prior, share_curve, stage1_model
    from ._forecast import Forecast, forecast
    from ._forecast_baselines import EndForecast
    from ._population import PopulationPrior, RunFit, fit_population
    from ._json import json_safe, write_json, write_text
    from physrl.contract import (Environment, LogValidationError, Manifest, MeasuredPrior, Run, jeffreys_interval,
                                 load_runs, read_table)
    from ._options import TRANSFERS, DEFAULT_TRUTH
    from ._observations import observations
    from ._problem import FitSpec, ParamInfo
    from ._step0 import Stage1Floor, stage1_floors
    from ._protocol import CriticalDiversity, critical_diversity, protocol_final_p
    from ._synthesize import identifiable_truth, synthesize
    from ._predict import Prediction, PredictionMetrics, in_sample, predict, save_prediction
    from ._draws import sample_parameters
    from ._takeoff import SelectionExponent, TakeoffRate, selection_exponent, takeoff_rate, trained_eval_counts


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
