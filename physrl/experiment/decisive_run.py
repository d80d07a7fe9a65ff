"""Training and freezing the decisive experiment (issue 22; the design is :mod:`physrl.experiment.decisive`).

Order, enforced here: calibration runs of every arm trained → per arm the model variant chosen by
leave-one-run-out on its calibration runs alone and the chosen variant fitted on all of them → every arm's
sweep-cell predictions frozen in one ``predictions.json`` (sha256 and write time in ``preregistration.json``)
→ only then sweep runs, arm by arm (the first arm whole before the second starts), each arm's stage-1 models
bisected round by round (:func:`physrl.experiment.decisive.next_probe`) → the arm's continuation runs. A rerun
verifies the frozen hash, skips finished runs, resumes unfinished ones and carries on the bisection where the
finished runs leave it. Outputs (``DIR``): ``experiment.json``, ``runs/<run_id>``, ``fit/<arm>/`` (fit.json,
fit_report.txt, crossval.json), ``predictions.json``, ``preregistration.json``; the analysis
(:mod:`physrl.experiment.decisive_analysis`) writes the rest.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from physrl import fitting

from . import freeze as _freeze
from .decisive import (DecisiveConfig, DecisiveRun, calibration_runs, max_probes, next_probe, stage1_models)
from .runs import refuse_mixed_configs, run_status, train_planned

FIT_DIR = "fit"


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[physrl decisive] {message}", file=sys.stderr, flush=True)


def run_counts(run_dir: str | Path) -> pd.DataFrame:
    """A finished run's eval counts on its trained environments per eval step (``fitting.trained_eval_counts``:
    step, n, n_rs, a_n, a_sum, b_n, b_sum), sorted by step."""
    return fitting.trained_eval_counts(fitting.load_runs([run_dir])[0]).sort_values("step").reset_index(drop=True)


def end_state(counts: pd.DataFrame, last_evals: int, max_step: int | None = None) -> tuple[float, int]:
    """(end state, last eval step) from a run's trained-env eval counts (:func:`run_counts`): the RS share pooled
    over its last ``last_evals`` eval passes (at or before ``max_step`` when given); a probability in [0, 1] and
    an optimizer step.

    Raises
    ------
    ValueError
        No eval pass (at or before ``max_step``).
    """
    c = counts if max_step is None else counts[counts["step"] <= max_step]
    if c.empty:
        raise ValueError("no eval pass on the trained environments" + ("" if max_step is None else
                                                                         f" at or before step {max_step}"))
    tail = c.sort_values("step").tail(last_evals)
    return float(tail["n_rs"].sum() / tail["n"].sum()), int(tail["step"].iloc[-1])


class EndStates:
    """End states of finished runs, read once per run (finished runs never change).

    From the run folders ``out_dir/runs/<run_id>``, or, with ``counts`` (the table
    :meth:`table` writes as ``eval_counts.csv``: ``run_id`` plus :func:`run_counts`' columns), from that table
    alone: a committed reference without its logs is analysed the same way.
    """

    def __init__(self, out_dir: Path, last_evals: int, counts: pd.DataFrame | None = None):
        self.runs = Path(out_dir) / "runs"
        self.last_evals = last_evals
        self._table = None if counts is None else {k: g.drop(columns="run_id").sort_values("step").reset_index(drop=True)
                                                   for k, g in counts.groupby("run_id")}
        self._counts: dict[str, pd.DataFrame] = {}

    def counts(self, run_id: str) -> pd.DataFrame | None:
        """The run's trained-env eval counts per eval step, or None when it is not finished."""
        if self._table is not None:
            return self._table.get(run_id)
        if run_id not in self._counts:
            if run_status(self.runs / run_id) != "finished":
                return None
            self._counts[run_id] = run_counts(self.runs / run_id)
        return self._counts[run_id]

    def get(self, run_id: str, max_step: int | None = None) -> tuple[float, int] | None:
        """(end state, step) of a finished run (:func:`end_state`), or None when it is not finished."""
        c = self.counts(run_id)
        return None if c is None else end_state(c, self.last_evals, max_step)

    def table(self) -> pd.DataFrame:
        """Every run read so far, as one table (``run_id`` first)."""
        source = self._table if self._table is not None else self._counts
        frames = [c.assign(run_id=k) for k, c in sorted(source.items())]
        if not frames:
            return pd.DataFrame(columns=["run_id", "step", "n", "n_rs", "a_n", "a_sum", "b_n", "b_sum"])
        t = pd.concat(frames, ignore_index=True)
        return t[["run_id"] + [c for c in t.columns if c != "run_id"]]


def planned_organisms(config: DecisiveConfig) -> dict[str, dict]:
    """The resolved organism config of every calibration run and every grid point of every sweep model (the
    continuation runs are these sweep configs with ``max_steps`` raised), validated before anything trains.

    Raises
    ------
    ValueError
        A bad ``[organism]`` or arm value, naming the run and the field.
    """
    from physrl.organisms import OrganismConfig

    out = {}
    first = DecisiveRun(config.arms[0].name, "sweep", config.n_grid[0], config.p0[0], config.seeds[0])
    resolved = OrganismConfig(**first.organism(config))
    passes = resolved.max_steps // resolved.eval_every + 1
    if config.last_evals >= passes:
        raise ValueError(f"last_evals = {config.last_evals} would read the step-0 eval pass into the end state: "
                         f"a {resolved.max_steps}-step run has {passes} eval passes (every {resolved.eval_every} "
                         "steps, from step 0)")
    if config.continuation_steps <= resolved.max_steps and config.continuation_max_runs > 0:
        raise ValueError(f"continuation_steps = {config.continuation_steps} must exceed the sweep's max_steps = "
                         f"{resolved.max_steps}")
    for arm in config.arms:
        runs = calibration_runs(config, arm.name)
        runs += [DecisiveRun(arm.name, "sweep", n, p0, s) for p0, s in stage1_models(config) for n in config.n_grid]
        for r in runs:
            try:
                out[r.run_id] = OrganismConfig(**r.organism(config)).to_dict()
            except TypeError as err:
                raise ValueError(f"[organism]: {err}") from err
            except ValueError as err:
                raise ValueError(f"[organism] (run {r.run_id}): {err}") from err
    return out


def bisection_state(config: DecisiveConfig, arm: str, ends: EndStates) -> dict[tuple[float, int], dict[int, bool]]:
    """Per sweep stage-1 model (p0, seed): grid index -> RS won, from the arm's finished sweep runs."""
    out = {}
    for p0, s in stage1_models(config):
        hist = {}
        for i, n in enumerate(config.n_grid):
            e = ends.get(DecisiveRun(arm, "sweep", n, p0, s).run_id)
            if e is not None:
                hist[i] = e[0] > config.threshold
        out[(p0, s)] = hist
    return out


def _fit_kwargs(config: DecisiveConfig, variant: str) -> dict:
    # step0 "fixed": the initial state measured at step 0, as the scaling experiment registered its fits
    kw = {"transfer": config.transfer, "step0": "fixed", "selection": variant}
    if config.fit_max_nfev is not None:
        kw["max_nfev"] = config.fit_max_nfev
    return kw


def choose_variant(config: DecisiveConfig, runs: list, progress: bool = False) -> tuple[str, dict]:
    """Leave-one-run-out over the calibration runs for every variant; returns (chosen variant, table).

    The rule, fixed before the sweep: fewest folds that failed or did not converge, then the lowest mean RMSE
    of the held-out run's RS share on its trained environments (``fitting.cross_validate``'s ``rmse_p``)
    rounded to 0.001 (closer is a tie), then the order of ``config.variants`` (the simpler law first).
    """
    table = {}
    for v in config.variants:
        cv = fitting.cross_validate(runs, n_samples=50, seed=0, **_fit_kwargs(config, v))
        t = cv.table
        ok = t["converged"].astype(bool) & (t["error"] == "") & t["rmse_p"].notna()
        table[v] = {"folds": len(t), "failed": int((~ok).sum()),
                    "mean_rmse_p": float(t.loc[ok, "rmse_p"].astype(float).mean()) if ok.any() else None,
                    "end_right": int(t.loc[ok, "end_right"].fillna(False).astype(bool).sum()),
                    "folds_table": cv.to_dict()["runs"]}
        _say(progress, f"leave-one-run-out, variant {v}: {table[v]['failed']} failed folds, mean RMSE "
                       f"{table[v]['mean_rmse_p']}")
    order = {v: i for i, v in enumerate(config.variants)}
    chosen = min(table, key=lambda v: (table[v]["failed"], math.inf if table[v]["mean_rmse_p"] is None
                                       else round(table[v]["mean_rmse_p"], 3), order[v]))
    return chosen, table


def check_frozen_design(config: DecisiveConfig, frozen: dict, budget: int) -> None:
    """Refuse a config whose forecasts were not the frozen ones: every arm, prior and grid point must have a
    frozen prediction, at the frozen threshold, end-state rule and budget, from the same calibration runs
    (the sweep's seeds may be fewer or more: forecasts are per cell, not per seed).

    Raises
    ------
    PreregistrationError
        Naming what differs.
    """
    ctx = frozen.get("context", {})
    differ = []
    missing = sorted({a.name for a in config.arms} - set(frozen.get("arms", {})))
    if missing:
        differ.append(f"arms {missing} have no frozen predictions")
    if [float(p) for p in ctx.get("p0", [])] != config.p0:
        differ.append(f"p0 {config.p0} (frozen {ctx.get('p0')})")
    if list(ctx.get("grid", [])) != list(config.n_grid):
        differ.append(f"n_grid {config.n_grid} (frozen {ctx.get('grid')})")
    for key, value in (("threshold", config.threshold), ("last_evals", config.last_evals), ("budget", budget)):
        if ctx.get(key) != value:
            differ.append(f"{key} {value} (frozen {ctx.get(key)})")
    cal = ctx.get("calibration_runs", {})
    for a in config.arms:
        if a.name in cal and sorted(cal[a.name]) != sorted(r.run_id for r in calibration_runs(config, a.name)):
            differ.append(f"calibration runs of {a.name}")
    if differ:
        raise _freeze.PreregistrationError(
            "this config is not the one whose predictions were frozen: " + "; ".join(differ)
            + ". Restore it, or use a new --out folder")


def sweep_budget(config: DecisiveConfig) -> int:
    """The sweep runs' step budget (``max_steps``, optimizer steps)."""
    from physrl.organisms import OrganismConfig

    r = DecisiveRun(config.arms[0].name, "sweep", config.n_grid[0], config.p0[0], config.seeds[0])
    return int(OrganismConfig(**r.organism(config)).max_steps)


def calibrate_and_freeze(config: DecisiveConfig, out: Path, *, progress: bool = True) -> tuple:
    """Train every arm's calibration runs, choose and fit each arm's variant, and freeze the predictions of
    every arm's sweep cells (once; a rerun verifies them). Returns ``(registration, frozen payload, fits)``.

    Raises
    ------
    PreregistrationError
        Sweep runs exist without frozen predictions, or the frozen file changed.
    RuntimeError
        A calibration run failed (rerun to resume it).
    """
    sweep_dirs = [out / "runs" / DecisiveRun(a.name, "sweep", n, p0, s).run_id
                  for a in config.arms for p0, s in stage1_models(config) for n in config.n_grid]
    _freeze.check_order(out, sweep_dirs)
    if _freeze.frozen(out):  # a changed design is refused before anything trains
        check_frozen_design(config, _freeze.verify(out)[1], sweep_budget(config))
    jobs = [(r.run_id, r.organism(config)) for a in config.arms for r in calibration_runs(config, a.name)]
    train_planned(config.executor, out, jobs, progress=progress, desc="calibration runs")
    fits = {}
    if _freeze.frozen(out):
        registration, frozen = _freeze.verify(out)
        for a in config.arms:
            path = out / FIT_DIR / a.name / "fit.json"
            fits[a.name] = fitting.FitResult.load(path) if path.exists() else None
        _say(progress, f"frozen predictions verified (sha256 {registration.sha256[:12]}…)")
        return registration, frozen, fits
    arms_payload = {}
    some = config.arms[0]
    sweep_cfg = DecisiveRun(some.name, "sweep", config.n_grid[0], config.p0[0], config.seeds[0]).organism(config)
    from physrl.organisms import OrganismConfig

    resolved = OrganismConfig(**sweep_cfg)
    budget = resolved.max_steps
    rollouts = resolved.eval_prompts_per_env * resolved.num_generations * config.last_evals
    for a in config.arms:
        cal = calibration_runs(config, a.name)
        runs = fitting.load_runs([out / "runs" / r.run_id for r in cal])
        _say(progress, f"{a.name}: choosing the model variant by leave-one-run-out over {len(runs)} calibration "
                       "runs")
        chosen, table = choose_variant(config, runs, progress)
        fit_result = fitting.fit(runs, **_fit_kwargs(config, chosen))
        fit_dir = out / FIT_DIR / a.name
        fit_dir.mkdir(parents=True, exist_ok=True)
        fit_result.save(fit_dir / "fit.json")
        fitting.write_text(fit_dir / "fit_report.txt", fit_result.report())
        fitting.write_json(fit_dir / "crossval.json", {"chosen": chosen, "variants": table})
        fits[a.name] = fit_result
        _say(progress, f"{a.name}: variant {chosen}, fit converged {fit_result.converged}; predicting every "
                       "sweep cell")
        payload = _freeze.predict_sweep(fit_result, {p0: list(config.n_grid) for p0 in config.p0}, [budget],
                                        config.threshold, eval_rollouts_per_env=rollouts,
                                        n_star_max=max(256, max(config.n_grid)), n_draws=config.n_draws,
                                        seed=min(config.calibration_seeds))
        payload["variant"] = chosen
        payload["crossval"] = {v: {k: t[k] for k in ("folds", "failed", "mean_rmse_p", "end_right")}
                               for v, t in table.items()}
        payload["fit_parameters"] = {n: e.value for n, e in fit_result.estimates.items()}
        payload["unidentified"] = list(fit_result.unidentified)
        arms_payload[a.name] = payload
    doc = {"arms": arms_payload,
           "context": {"calibration_runs": {a.name: [r.run_id for r in calibration_runs(config, a.name)]
                                            for a in config.arms},
                       "grid": list(config.n_grid), "p0": config.p0, "seeds": config.seeds, "budget": budget,
                       "threshold": config.threshold, "last_evals": config.last_evals,
                       "bisection": "decisive.next_probe: start mid-grid, down after a win, up after a loss, "
                                    "stop when the last loss and first win are grid neighbours",
                       "end_state": f"RS share pooled over the last {config.last_evals} eval passes on the "
                                    "trained environments"}}
    registration = _freeze.freeze(out, doc)
    registration, frozen = _freeze.verify(out)
    _say(progress, f"predictions frozen: {registration.file} sha256 {registration.sha256[:12]}…")
    return registration, frozen, fits


def sweep_arm(config: DecisiveConfig, out: Path, arm: str, ends: EndStates, *, progress: bool = True) -> int:
    """Bisect every stage-1 model of ``arm``, round by round, until every bisection has stopped; returns the
    number of rounds trained in this call.

    Raises
    ------
    RuntimeError
        A run failed (rerun to resume; the bisection carries on from the finished runs).
    """
    rounds = 0
    for _ in range(max_probes(len(config.n_grid)) + 1):
        state = bisection_state(config, arm, ends)
        todo = []
        for (p0, s), hist in state.items():
            i = next_probe(hist, len(config.n_grid))
            if i is not None:
                todo.append(DecisiveRun(arm, "sweep", config.n_grid[i], p0, s))
        if not todo:
            break
        rounds += 1
        _say(progress, f"{arm}: bisection round ({len(todo)} runs)")
        train_planned(config.executor, out, [(r.run_id, r.organism(config)) for r in todo], progress=progress,
                      desc=f"{arm} sweep runs, round of {len(todo)}")
    return rounds


def continuation_choice(config: DecisiveConfig, arm: str, ends: EndStates) -> list[DecisiveRun]:
    """The arm's sweep runs to continue: end state within ``continuation_band`` of the threshold, closest
    first (ties by run id), at most ``ceil(continuation_share × runs)`` and ``continuation_max_runs``."""
    rows = []
    for p0, s in stage1_models(config):
        for n in config.n_grid:
            r = DecisiveRun(arm, "sweep", n, p0, s)
            e = ends.get(r.run_id)
            if e is not None and abs(e[0] - config.threshold) <= config.continuation_band:
                rows.append((abs(e[0] - config.threshold), r.run_id, r))
    n_runs = sum(ends.get(DecisiveRun(arm, "sweep", n, p0, s).run_id) is not None
                 for p0, s in stage1_models(config) for n in config.n_grid)
    k = min(config.continuation_max_runs, math.ceil(round(config.continuation_share * n_runs, 9)))
    return [DecisiveRun(arm, "continued", r.n_envs, r.p0, r.seed) for _, _, r in sorted(rows)[:k]]


def continue_arm(config: DecisiveConfig, out: Path, arm: str, ends: EndStates, *, progress: bool = True) -> list:
    """Train the arm's continuation runs (:func:`continuation_choice`) to ``continuation_steps``; the choice is
    recorded in ``continued-<arm>.json`` the first time, and reused after (so a rerun trains the same runs)."""
    record = out / f"continued-{arm}.json"
    settings = {"continuation_steps": config.continuation_steps, "continuation_max_runs": config.continuation_max_runs,
                "continuation_share": config.continuation_share, "continuation_band": config.continuation_band}
    if record.exists():
        saved = json.loads(record.read_text())
        if isinstance(saved, dict) and saved.get("settings") != settings:
            raise ValueError(f"{record} chose its runs with {saved.get('settings')}; this config asks for {settings}: "
                             "restore those settings, or use a new --out folder")
        chosen = [DecisiveRun(**d) for d in (saved["runs"] if isinstance(saved, dict) else saved)]
    else:
        chosen = continuation_choice(config, arm, ends)
        fitting.write_json(record, {"settings": settings,
                                    "runs": [{"arm": r.arm, "role": r.role, "n_envs": r.n_envs, "p0": r.p0,
                                              "seed": r.seed} for r in chosen]})
    todo = [r for r in chosen if run_status(out / "runs" / r.run_id) != "finished"]
    if todo:
        _say(progress, f"{arm}: {len(todo)} of {len(chosen)} continuation runs to train ({config.continuation_steps} "
                       "steps)")
        train_planned(config.executor, out, [(r.run_id, r.organism(config, max_steps=config.continuation_steps))
                                             for r in chosen], progress=progress, desc=f"{arm} continued runs")
    return chosen


def train_decisive(config: DecisiveConfig, out_dir: str | Path, *, progress: bool = True,
                   arms: list[str] | None = None) -> dict:
    """Run (or resume) the design's training: calibration, freeze, then each arm's sweep and continuation.

    Parameters
    ----------
    config : DecisiveConfig
    out_dir : path
    progress : bool
    arms : list of str, optional
        Train only these arms' sweeps (default: all, in config order). Calibration and freezing always cover
        every arm, so the predictions of an arm trained later were frozen before any sweep run.

    Returns
    -------
    dict
        ``{"registration": Preregistration, "rounds": {arm: rounds trained in this call}}``.

    Raises
    ------
    ValueError
        Finished runs in ``out_dir`` trained with another config.
    PreregistrationError, RuntimeError
        As :func:`calibrate_and_freeze` and :func:`sweep_arm`.
    """
    out = Path(out_dir)
    resolved = planned_organisms(config)
    refuse_mixed_configs(out, resolved)
    out.mkdir(parents=True, exist_ok=True)
    fitting.write_json(out / "experiment.json", config.to_dict())
    registration, _, _ = calibrate_and_freeze(config, out, progress=progress)
    ends = EndStates(out, config.last_evals)
    rounds = {}
    for a in config.arms:
        if arms is not None and a.name not in arms:
            continue
        rounds[a.name] = sweep_arm(config, out, a.name, ends, progress=progress)
        continue_arm(config, out, a.name, ends, progress=progress)
    return {"registration": registration, "rounds": rounds}
