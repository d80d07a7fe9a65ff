"""The experiment: a diversity experiment end to end, grouped by stage so that data flows one way through it.

1. **plan**: :mod:`.config` (:class:`ExperimentConfig`, a typed TOML config) and the run plan in :mod:`.runs`
   (:func:`plan_runs`: role, N, p0, held-out count and seed of every organism run);
2. **train**: :mod:`.runs` trains the plan through an executor (:mod:`.executors`: a local process pool,
   Slurm via submitit, or Ray), skipping finished runs and resuming the others;
3. **fit & freeze**: :mod:`.freeze` fits the ODE on the calibration runs and freezes its predictions for
   every sweep cell before any sweep run is trained (hash-checked on every rerun);
4. **analyse**: :mod:`.replication` (the unit of replication, the stage-1 model: cluster bootstrap
   resamples, P(RS wins) with a random intercept per stage-1 model and its ICC), :mod:`.scaling` (the
   scaling law's statistics: Firth N*, slope of log N* on log p0, win table, with bootstrap intervals over
   stage-1 models) and :mod:`.analysis` (observed N*, the frozen forecasts' proper scores against hindsight
   and prospective baselines, the RS classifiers' accuracy);
5. **report**: :mod:`.words` (every N* and score in words, one estimator named per number),
   :mod:`.figures` and :mod:`.scaling_figures` (matplotlib figures and report sections),
   :mod:`.headline` (the report's first screen: three plain answers and one figure) and :mod:`.report`
   (the self-contained HTML file).

:mod:`.run` drives the stages in that order (:func:`run_experiment`, :func:`reanalyse`) and :mod:`.cli` is
``physrl experiment`` / ``physrl demo``. A stage module imports only from the stages before it
(``tests/test_house.py`` checks the order: ray_resources, executors, config, runs, words, replication, scaling,
freeze, analysis, report, figures, scaling_figures, headline, takeoff, decisive, decisive_run, decisive_analysis,
run, cli). :mod:`.takeoff` is issue 19's
takeoff experiment (``kind = "takeoff"`` configs): its own plan (one stage-1 model per prior and seed, shared by
the RL-algorithm arms), trained through :func:`.runs.train_planned`, analysed with ``fitting.takeoff_rate`` /
``fitting.selection_exponent``. :mod:`.decisive` (design, bisection rule), :mod:`.decisive_run` (calibration,
leave-one-run-out variant choice, freezing, the arms' bisection rounds) and :mod:`.decisive_analysis` (N*(p0)
and its slope per arm, their difference, scores, report) are issue 22's decisive experiment
(``kind = "decisive"``). A new analysis is a module of this room between
:mod:`.analysis` and the report.

Names are imported on first use (PEP 562, as in ``physrl.fitting``), so ``physrl experiment --help`` starts
without the fit's or the organisms' dependencies.

Room: experiment; may import: contract, sim, fitting, organisms and its own room.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from physrl._util.lazy import lazy_exports

#: public name -> the module that owns it (absolute: this package's modules are public)
_EXPORTS = {
    "run_experiment": "physrl.experiment.run", "reanalyse": "physrl.experiment.run",
    "fitting": "physrl.experiment.run",  # the fitting package as the pipeline calls it (tests patch fitting.fit)
    "CalibrationRun": "physrl.experiment.config", "ExperimentConfig": "physrl.experiment.config",
    "ENGINES": "physrl.experiment.executors", "Executor": "physrl.experiment.executors",
    "ExecutorConfig": "physrl.experiment.executors",
    "CALIBRATION": "physrl.experiment.runs", "SWEEP": "physrl.experiment.runs", "PlannedRun": "physrl.experiment.runs",
    "plan_runs": "physrl.experiment.runs", "plan_table": "physrl.experiment.runs",
    "check_existing_runs": "physrl.experiment.runs", "organism_configs": "physrl.experiment.runs",
    "train_all": "physrl.experiment.runs",
    "Preregistration": "physrl.experiment.freeze", "PreregistrationError": "physrl.experiment.freeze",
    "predict_sweep": "physrl.experiment.freeze", "protocol_final_p": "physrl.experiment.freeze",
    "predicted_n_star": "physrl.experiment.freeze",
    "Scores": "physrl.experiment.analysis", "SweepPoint": "physrl.experiment.analysis",
    "observed_n_star": "physrl.experiment.analysis", "pooled_accuracy": "physrl.experiment.analysis",
    "score": "physrl.experiment.analysis",
    "n_star_by_p0": "physrl.experiment.scaling", "slope_with_interval": "physrl.experiment.scaling",
    "win_table": "physrl.experiment.scaling",
    "Section": "physrl.experiment.report", "write_report": "physrl.experiment.report",
    "TakeoffArm": "physrl.experiment.takeoff", "TakeoffConfig": "physrl.experiment.takeoff",
    "TakeoffRun": "physrl.experiment.takeoff", "plan_takeoff": "physrl.experiment.takeoff",
    "run_takeoff": "physrl.experiment.takeoff", "analyse_takeoff": "physrl.experiment.takeoff",
    "train_planned": "physrl.experiment.runs",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from physrl.experiment.analysis import Scores, SweepPoint, observed_n_star, pooled_accuracy, score
    from physrl.experiment.config import CalibrationRun, ExperimentConfig
    from physrl.experiment.executors import ENGINES, Executor, ExecutorConfig
    from physrl.experiment.freeze import (Preregistration, PreregistrationError, predict_sweep, predicted_n_star,
                                          protocol_final_p)
    from physrl.experiment.report import Section, write_report
    from physrl.experiment.run import fitting, reanalyse, run_experiment
    from physrl.experiment.runs import (CALIBRATION, SWEEP, PlannedRun, check_existing_runs, organism_configs,
                                        plan_runs, plan_table, train_all)
    from physrl.experiment.scaling import n_star_by_p0, slope_with_interval, win_table
    from physrl.experiment.takeoff import (TakeoffArm, TakeoffConfig, TakeoffRun, analyse_takeoff, plan_takeoff,
                                           run_takeoff)
    from physrl.experiment.runs import train_planned


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
