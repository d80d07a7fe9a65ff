"""The diversity experiment's configuration: which organisms to train, which to
fit on, and where to run them.

A config file is TOML (or JSON) whose tables mirror these dataclasses; every
field has a default, so a file states only what it changes. The resolved
config is written next to the results (``DIR/experiment.json``) so a result
can be re-run from it and the seed.
"""

from __future__ import annotations

import json
from physrl._util import toml as _toml
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .executors import ExecutorConfig, check_population_size
from physrl.fitting import TRANSFERS


def _is_list(value, types) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(v, types) and not isinstance(v, bool) for v in value))


def refuse_unknown_keys(cls, data: dict, where: str) -> None:
    """Raise ValueError naming the keys of ``data`` that are not fields of the dataclass ``cls``
    (``unknown <where> key(s) [...]; known: [...]``): the one check every config table goes through."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {where} key(s) {unknown}; known: {sorted(known)}")


def _build(cls, data, where: str):
    """``cls(**data)`` with unknown keys and wrong types named (``where.key``)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table, got {data!r}")
    refuse_unknown_keys(cls, data, where)
    known = {f.name: f for f in fields(cls)}
    for key, value in data.items():
        kind = str(known[key].type)
        if value is None and "None" in kind:
            continue
        expected = {"int": int, "float": (int, float), "str": str}.get(kind.split(" ")[0])
        if expected is not None and (not isinstance(value, expected) or isinstance(value, bool)):
            raise ValueError(f"{where}.{key} must be of type {known[key].type}, got {value!r}")
    return cls(**data)


@dataclass
class CalibrationRun:
    """One run the ODE is fitted on (docs/model.md §6: a low-p0 and a higher-p0 run,
    each with held-out environments, identify every parameter).

    Attributes
    ----------
    n_envs : int
        Training environments N (>= 1).
    p0 : float
        Prior RS propensity in (0, 1) set by pretraining.
    n_held_out : int
        Extra environments evaluated but never trained (w = 0); they identify
        transfer.
    """

    n_envs: int
    p0: float
    n_held_out: int = 2

    def __post_init__(self):
        if self.n_envs < 1:
            raise ValueError(f"calibration.n_envs must be >= 1, got {self.n_envs}")
        if not 0 < self.p0 < 1:
            raise ValueError(f"calibration.p0 must lie in (0, 1), got {self.p0}")
        if self.n_held_out < 0:
            raise ValueError(f"calibration.n_held_out must be >= 0, got {self.n_held_out}")


@dataclass
class ExperimentConfig:
    """The post's question on real organisms: does RS win more often as N grows?

    Attributes
    ----------
    name : str
        A label for the report.
    n_envs : list of int
        Diversities N of the sweep (test runs, never fitted on).
    p0 : list of float
        Priors of the sweep, each in (0, 1).
    seeds : list of int
        Organism seeds; every (N, p0) is trained once per seed.
    calibration : list of CalibrationRun
        The runs the ODE is fitted on.
    threshold : float
        RS share above which RS "wins" (docs/model.md §3), in (0, 1).
    transfer : {"none", "homogeneous", "kernel"}
        The transfer model fitted.
    organism : dict
        Overrides of the organisms' training config shared by every run
        (e.g. ``max_steps``, ``eval_every``); see ``organisms`` for fields.
    executor : ExecutorConfig
        Where runs execute (local pool, Slurm via submitit, Ray).
    n_star_max : int
        Largest N searched when predicting N*.
    fit_max_nfev : int
        Cap on the fit's residual evaluations (lmfit ``max_nfev``). Real logs
        can pin parameters at a bound (c = 1, α → 0), where Levenberg-Marquardt
        crawls; a fit stopped by the cap says so in its notes and the report.
    n_envs_by_p0 : dict of str to list of int
        Per-p0 N grids (keys: a p0 of ``p0`` written as a number, e.g.
        ``"0.05"``); a p0 not listed uses ``n_envs``. Lets every p0's grid
        bracket its own expected N*.
    calibration_seeds : list of int or None
        Seeds of the calibration runs. None: the sweep's ``seeds`` (then the
        calibration and sweep share seeds, which the report states). The
        scaling experiment uses seeds of their own, never reused in the sweep.
    family_heldout : int or None
        None: each sweep run has its own family of N trained environments.
        An integer h: the fixed-family design, one family of K = max N(p0) + h
        environments per (p0, seed), the first N trained and the other K − N
        held out (w = 0), so all N of a seed share the digit maps and one
        stage-1 model (organisms README, "family design").
    vary_family_seed : bool
        If true every run's ``family_seed`` is ``organism.family_seed + seed``,
        so no result rests on one set of digit maps.
    budgets : list of int
        Step budgets (optimizer steps) at which end states are also read;
        the run's last step is always one. N* depends on the budget.
    bootstrap : int
        Bootstrap replicates (over seeds) for N* and the slope's intervals.
    prediction_draws : int
        Parameter draws from the calibration fit behind the frozen predictions.
    """

    name: str = "diversity"
    n_envs: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    p0: list[float] = field(default_factory=lambda: [0.05, 0.2])
    seeds: list[int] = field(default_factory=lambda: [0])
    calibration: list[CalibrationRun] = field(default_factory=lambda: [
        CalibrationRun(n_envs=1, p0=0.05, n_held_out=2), CalibrationRun(n_envs=2, p0=0.2, n_held_out=2)])
    threshold: float = 0.5
    transfer: str = "homogeneous"
    organism: dict = field(default_factory=dict)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    n_star_max: int = 64
    fit_max_nfev: int = 400
    n_envs_by_p0: dict = field(default_factory=dict)
    calibration_seeds: list[int] | None = None
    family_heldout: int | None = None
    vary_family_seed: bool = False
    budgets: list[int] = field(default_factory=list)
    bootstrap: int = 2000
    prediction_draws: int = 200

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not _is_list(self.n_envs, int) or any(n < 1 for n in self.n_envs):
            raise ValueError(f"n_envs must be a non-empty list of integers >= 1, got {self.n_envs!r}")
        self.n_envs = sorted(set(self.n_envs))  # a repeated value would plan the same run twice
        if not _is_list(self.p0, (int, float)) or any(not 0 < p < 1 for p in self.p0):
            raise ValueError(f"p0 must be a non-empty list of priors in (0, 1), got {self.p0!r}")
        self.p0 = sorted({float(p) for p in self.p0})
        if not _is_list(self.seeds, int) or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {self.seeds!r}")
        self.seeds = sorted(set(self.seeds))
        for name in ("threshold",):
            if not isinstance(getattr(self, name), (int, float)) or isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a number, got {getattr(self, name)!r}")
        for name in ("n_star_max", "fit_max_nfev"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if not isinstance(self.organism, dict):
            raise ValueError(f"organism must be a table of organism config fields, got {self.organism!r}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        if self.transfer not in TRANSFERS:
            raise ValueError(f"transfer must be one of {TRANSFERS}, got {self.transfer!r}")
        if not isinstance(self.calibration, list) or not self.calibration:
            raise ValueError("calibration must be a non-empty list of runs to fit on "
                             f"({{n_envs = .., p0 = .., n_held_out = ..}} tables), got {self.calibration!r}")
        self.calibration = [c if isinstance(c, CalibrationRun) else _build(CalibrationRun, c, "calibration")
                            for c in self.calibration]
        if len({(c.n_envs, c.p0, c.n_held_out) for c in self.calibration}) < len(self.calibration):
            raise ValueError("calibration lists the same run twice")
        if isinstance(self.executor, dict):
            self.executor = _build(ExecutorConfig, self.executor, "executor")
        elif not isinstance(self.executor, ExecutorConfig):
            raise ValueError(f"executor must be a table, got {self.executor!r}")
        check_population_size(self.organism, self.executor)
        if self.fit_max_nfev < 10:
            raise ValueError(f"fit_max_nfev must be >= 10, got {self.fit_max_nfev}")
        self._check_scaling_fields()
        largest = max(max(ns) for ns in self.sweep_grid().values())
        if self.n_star_max < largest:
            raise ValueError(f"n_star_max must be >= the largest swept N = {largest}")

    def _check_scaling_fields(self) -> None:
        if not isinstance(self.n_envs_by_p0, dict):
            raise ValueError(f"n_envs_by_p0 must be a table of p0 -> list of N, got {self.n_envs_by_p0!r}")
        grid = {}
        for key, ns in self.n_envs_by_p0.items():
            try:
                p0 = float(key)
            except (TypeError, ValueError):
                raise ValueError(f"n_envs_by_p0 key {key!r} is not a number") from None
            match = [p for p in self.p0 if abs(p - p0) <= 1e-12 * max(1.0, p)]
            if not match:
                raise ValueError(f"n_envs_by_p0 key {key!r} is not one of p0 = {self.p0}")
            if not _is_list(ns, int) or any(n < 1 for n in ns):
                raise ValueError(f"n_envs_by_p0[{key!r}] must be a non-empty list of integers >= 1, got {ns!r}")
            grid[f"{match[0]:g}"] = sorted(set(ns))
        self.n_envs_by_p0 = grid
        if self.calibration_seeds is not None:
            if not _is_list(self.calibration_seeds, int) or any(s < 0 for s in self.calibration_seeds):
                raise ValueError("calibration_seeds must be a non-empty list of integers >= 0, "
                                 f"got {self.calibration_seeds!r}")
            self.calibration_seeds = sorted(set(self.calibration_seeds))
        if self.family_heldout is not None and (not isinstance(self.family_heldout, int)
                                                or isinstance(self.family_heldout, bool)
                                                or self.family_heldout < 0):
            raise ValueError(f"family_heldout must be an integer >= 0 or absent, got {self.family_heldout!r}")
        if not isinstance(self.vary_family_seed, bool):
            raise ValueError(f"vary_family_seed must be true or false, got {self.vary_family_seed!r}")
        if not isinstance(self.budgets, list) or not all(isinstance(b, int) and not isinstance(b, bool)
                                                         and b >= 1 for b in self.budgets):
            raise ValueError(f"budgets must be a list of integers >= 1 (optimizer steps), got {self.budgets!r}")
        self.budgets = sorted(set(self.budgets))
        for name, low in (("bootstrap", 0), ("prediction_draws", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    def sweep_grid(self) -> dict[float, list[int]]:
        """p0 -> the N values swept at that p0 (``n_envs_by_p0`` or ``n_envs``), p0 ascending."""
        return {p0: list(self.n_envs_by_p0.get(f"{p0:g}", self.n_envs)) for p0 in self.p0}

    def family_size(self, p0: float) -> int | None:
        """K of the fixed-family design at ``p0`` (None: each run has its own family)."""
        if self.family_heldout is None:
            return None
        return max(self.sweep_grid()[p0]) + self.family_heldout

    def calibration_seed_list(self) -> list[int]:
        """Seeds of the calibration runs (``calibration_seeds`` or the sweep's ``seeds``)."""
        return list(self.calibration_seeds if self.calibration_seeds is not None else self.seeds)

    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentConfig":
        """Build from a mapping; unknown keys are an error naming the key."""
        refuse_unknown_keys(cls, data, "experiment config")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> "ExperimentConfig":
        """Read a TOML (``.toml``) or JSON file.

        Raises
        ------
        FileNotFoundError, ValueError
            A missing file, a parse error, or a bad value (named).
        """
        path = Path(path)
        text = path.read_text()
        try:
            data = _toml.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (_toml.TOMLDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot parse config: {err}") from err
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return asdict(self)
