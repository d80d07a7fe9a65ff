"""A run as fitting reads it (:class:`Run`: manifest + validated rollouts, from a directory or a table file) and
its measured prior (:class:`MeasuredPrior`, Jeffreys intervals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ._read import _check_no_batch_in_two_chunks, _first_bad, read_table
from ._schema import PHASES, Environment, LogValidationError, Manifest, _Environments, chunk_paths, read_manifest


# ---- the measured prior ------------------------------------------------------------------------
def jeffreys_interval(successes, trials, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Jeffreys interval for a binomial proportion (Brown, Cai & DasGupta 2001).

    The Beta(k + 1/2, n - k + 1/2) quantiles, with lower = 0 when k = 0 and
    upper = 1 when k = n.

    Parameters
    ----------
    successes, trials : array_like
        Success counts k (may be fractional) and trial counts n >= k.
    level : float
        Coverage in (0, 1).

    Returns
    -------
    (lower, upper) : ndarrays
        In [0, 1]; NaN when n = 0.
    """
    from scipy import stats  # here, not at module import: an organism worker never calls this (0.5 s)

    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    tail = (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = stats.beta.ppf(tail, k + 0.5, n - k + 0.5)
        hi = stats.beta.ppf(1 - tail, k + 0.5, n - k + 0.5)
    lo = np.where(k <= 0, 0.0, lo)
    hi = np.where(k >= n, 1.0, hi)
    empty = n <= 0
    return np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)


@dataclass(frozen=True)
class PriorEstimate:
    """RS share of the rollouts sampled from the initial policy: counts and a Jeffreys interval.

    Attributes
    ----------
    n_rs, n : int
        RS rollouts and rollouts counted.
    lower, upper : float
        Jeffreys interval at ``level`` (NaN when n = 0).
    level : float
    """

    n_rs: int
    n: int
    lower: float
    upper: float
    level: float

    @property
    def share(self) -> float:
        """k / n, the observed RS share in [0, 1] (NaN when n = 0)."""
        return self.n_rs / self.n if self.n else math.nan

    @property
    def value(self) -> float:
        """(k + 1/2) / (n + 1), the Jeffreys posterior mean: in (0, 1), so usable as an ODE prior p0."""
        return (self.n_rs + 0.5) / (self.n + 1.0)

    def to_dict(self) -> dict[str, float]:
        return {"n_rs": self.n_rs, "n": self.n, "share": self.share, "value": self.value,
                "lower": self.lower, "upper": self.upper, "level": self.level}


@dataclass(frozen=True)
class MeasuredPrior:
    """The measured prior p0 of a run: RS share at its first logged step (docs/model.md §6).

    Attributes
    ----------
    step : int
        The first logged step (0 for a run logged from the start), in optimizer steps.
    phases : tuple of str
        Phases counted.
    pooled : PriorEstimate
        Pooled over the pooled environments (``env_ids``).
    env_ids : tuple of str
        Environments pooled: the trained ones (w > 0), or all when none trains.
    per_env : dict env_id -> PriorEstimate
        Every environment with rows at ``step``.
    """

    step: int
    phases: tuple[str, ...]
    pooled: PriorEstimate
    env_ids: tuple[str, ...]
    per_env: dict[str, PriorEstimate]

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "phases": list(self.phases), "env_ids": list(self.env_ids),
                "pooled": self.pooled.to_dict(), "per_env": {k: v.to_dict() for k, v in self.per_env.items()}}


def _estimate(k: int, n: int, level: float) -> PriorEstimate:
    lo, hi = jeffreys_interval(k, n, level)
    return PriorEstimate(int(k), int(n), float(lo), float(hi), level)


# ---- runs --------------------------------------------------------------------------------------
@dataclass
class Run(_Environments):
    """A validated run: its contract rows, its manifest and what the reader assumed.

    Attributes
    ----------
    run_id : str
    source : Path
        Run directory or table file it was read from.
    rollouts : pandas.DataFrame
        The contract's columns only (docs/rollouts.md), one row per rollout.
    manifest : Manifest or None
        None for a table read without a manifest.
    environments : list of Environment
        The manifest's; without a manifest, w is inferred (1/n for the n envs
        with train rows, 0 for the others; a warning says so).
    notes : list of str
        Everything the reader assumed or noticed (warnings included).
    warnings : list of str
        Defaults the reader substituted for missing contract information; a
        command line prints them and a fit records them.
    """

    run_id: str
    source: Path
    rollouts: pd.DataFrame
    manifest: Manifest | None
    environments: list[Environment]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Record a warning (also kept in ``notes``)."""
        self.warnings.append(message)
        self.notes.append(f"warning: {message}")

    @property
    def finished(self) -> bool:
        """The manifest says ``status = "finished"``."""
        return self.manifest is not None and self.manifest.status == "finished"

    @property
    def p0_hint(self) -> float | None:
        """The prior the producer set exactly (manifest ``p0``), if any."""
        return None if self.manifest is None else self.manifest.p0

    @property
    def prior(self) -> MeasuredPrior:
        """The measured prior with the defaults of :meth:`measured_prior` (all phases, trained envs pooled)."""
        return self.measured_prior()

    def measured_prior(self, phases: Sequence[str] | None = None, env_ids: Sequence[str] | None = None,
                       level: float = 0.95) -> MeasuredPrior:
        """RS share of the rollouts at the run's first logged step (normally 0: the initial policy).

        Parameters
        ----------
        phases : sequence of str, optional
            Phases counted (default both: train and eval rollouts at that step
            come from the same initial policy).
        env_ids : sequence of str, optional
            Environments pooled (default: the trained ones, w > 0; all when none trains).
        level : float
            Coverage of the Jeffreys intervals.

        Returns
        -------
        MeasuredPrior
            ``pooled`` (counts, Jeffreys interval, ``value`` in (0, 1)) and ``per_env``.

        Raises
        ------
        ValueError
            If the run has no rows in ``phases``.
        """
        phases = tuple(PHASES if phases is None else phases)
        df = self.rollouts[self.rollouts["phase"].isin(phases)]
        if df.empty:
            raise ValueError(f"run {self.run_id}: no rollouts in phases {phases} to measure the prior from")
        step = int(df["step"].min())
        at = df[df["step"] == step]
        counts = at.groupby("env_id", sort=False)["rs"].agg(["sum", "size"])
        per_env = {str(e): _estimate(int(r["sum"]), int(r["size"]), level) for e, r in counts.iterrows()}
        if env_ids is None:
            env_ids = self.trained_env_ids or self.env_ids
        env_ids = tuple(env_ids)
        k = sum(per_env[e].n_rs for e in env_ids if e in per_env)
        n = sum(per_env[e].n for e in env_ids if e in per_env)
        return MeasuredPrior(step, phases, _estimate(k, n, level), env_ids, per_env)


def _inferred_environments(rollouts: pd.DataFrame) -> list[Environment]:
    seen = list(dict.fromkeys(rollouts["env_id"].tolist()))
    trained = sorted(set(rollouts.loc[rollouts["phase"] == "train", "env_id"]))
    n = len(trained)
    return [Environment(e, (1.0 / n) if e in trained else 0.0) for e in sorted(seen)]


def _make_run(manifest: Manifest | None, manifest_path: Path | None, rollouts: pd.DataFrame, source: Path,
              row_files: Sequence[tuple[Path, pd.DataFrame]]) -> Run:
    """Check the rows against the manifest and build the Run (errors name the file and field)."""
    if manifest is None:
        run_ids = list(dict.fromkeys(rollouts["run_id"].tolist()))
        run = Run(str(run_ids[0]) if run_ids else source.name, source, rollouts, None,
                  _inferred_environments(rollouts))
        trained = run.trained_env_ids
        weights = (f"w inferred as 1/{len(trained)} for the envs with train rows {trained} and 0 for the others"
                   if trained else "no train rows, so every env is taken as held out (w = 0)")
        run.warn(f"{source.name}: no manifest (docs/rollouts.md): {weights}; no coordinates or observation "
                 "bounds; status unknown")
        return run
    listed = set(manifest.env_ids)
    for path, frame in row_files:
        bad = (frame["run_id"] != manifest.run_id).to_numpy()
        if bad.any():
            i = _first_bad(bad)
            raise LogValidationError(path, i, "run_id", f"{frame['run_id'].iloc[i]!r} disagrees with the manifest's "
                                     f"run_id {manifest.run_id!r} ({manifest_path})")
        bad = ~frame["env_id"].isin(listed).to_numpy()
        if bad.any():
            i = _first_bad(bad)
            raise LogValidationError(path, i, "env_id", f"{frame['env_id'].iloc[i]!r} is not in the manifest's "
                                     f"environments {manifest.env_ids} ({manifest_path}); without it the "
                                     "environment's w is unknown")
    run = Run(manifest.run_id, source, rollouts, manifest, list(manifest.environments))
    if manifest.status == "finished" and manifest.rows_written is not None and manifest.rows_written != len(rollouts):
        raise LogValidationError(manifest_path, field="rows_written",
                                 problem=f"the finished run wrote {manifest.rows_written} rows but {source} holds "
                                         f"{len(rollouts)} (a chunk is missing or was added)")
    if manifest.status != "finished":
        run.warn(f"run not finished (status {manifest.status!r}): using the {len(rollouts)} rows present")
    return run


def _read_run_dir(path: Path) -> Run:
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise LogValidationError(path, field="manifest.json",
                                 problem="a run directory holds manifest.json (docs/rollouts.md) and this one "
                                         "has none: it says which environments were trained (w)")
    manifest = read_manifest(manifest_path)
    parts = chunk_paths(path)
    if not parts:
        raise LogValidationError(path, problem="no rollouts/part-*.parquet chunks")
    frames = [read_table(p) for p in parts]
    _check_no_batch_in_two_chunks(parts, frames)
    rollouts = pd.concat(frames, ignore_index=True)
    return _make_run(manifest, manifest_path, rollouts, path, list(zip(parts, frames)))


def _read_table_runs(path: Path) -> list[Run]:
    rollouts = read_table(path)
    if rollouts.empty:
        raise LogValidationError(path, problem="no rows")
    candidates = [path.with_name(path.stem + ".manifest.json"), path.with_name("manifest.json")]
    manifest_path = next((m for m in candidates if m.exists()), None)
    if manifest_path is not None:
        manifest = read_manifest(manifest_path)
        return [_make_run(manifest, manifest_path, rollouts, path, [(path, rollouts)])]
    return [_make_run(None, None, rows.reset_index(drop=True), path, [])
            for _, rows in rollouts.groupby("run_id", sort=False)]


def load_runs(paths) -> list[Run]:
    """Load and validate one or many runs (docs/rollouts.md).

    Parameters
    ----------
    paths : str, Path, or a list of them
        Run directories (``manifest.json`` + ``rollouts/part-*.parquet``) or
        table files (``.parquet``, ``.csv``, ``.jsonl``); a table without a
        manifest that holds several ``run_id`` values yields one run each.

    Returns
    -------
    list of Run
        In the order given.

    Raises
    ------
    LogValidationError
        On the first contract violation, naming file, row and column (or
        manifest field): a chunk or table breaking the schema, a run directory
        without a manifest, a manifest breaking the contract, rows whose
        ``run_id`` disagrees with the manifest or whose ``env_id`` it does not
        list, a finished run missing rows, or the same run given twice (it
        would be counted twice and its error bars shrink).
    FileNotFoundError
        If a path does not exist.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    runs: list[Run] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such run directory or file")
        runs += [_read_run_dir(path)] if path.is_dir() else _read_table_runs(path)
    seen: dict[str, Run] = {}
    for run in runs:
        first = seen.get(run.run_id)
        if first is not None:
            same = Path(first.source).resolve() == Path(run.source).resolve()
            raise LogValidationError(run.source, column="run_id",
                                     problem=f"run {run.run_id!r} is given twice"
                                             + ("" if same else f" (also in {first.source})")
                                             + ": its rollouts would be counted twice and the error bars shrink")
        seen[run.run_id] = run
    return runs
