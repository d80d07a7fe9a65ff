"""The diversity experiment's configuration: which organisms to train, which to
fit on, and where to run them.

A config file is TOML (or JSON) whose tables mirror these dataclasses; every
field has a default, so a file states only what it changes. The resolved
config is written next to the results (``DIR/experiment.json``) so a result
can be re-run from it and the seed.
"""

from __future__ import annotations

import json
from physrl import _toml
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from physrl.executors import ExecutorConfig
from physrl.fitting import TRANSFERS


def _is_list(value, types) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(v, types) and not isinstance(v, bool) for v in value))


def _build(cls, data, where: str):
    """``cls(**data)`` with unknown keys and wrong types named (``where.key``)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown {where} key(s) {unknown}; known: {sorted(known)}")
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

    def __post_init__(self):
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
        if not self.calibration:
            raise ValueError("calibration must name at least one run to fit on")
        self.calibration = [c if isinstance(c, CalibrationRun) else _build(CalibrationRun, c, "calibration")
                            for c in self.calibration]
        if len({(c.n_envs, c.p0, c.n_held_out) for c in self.calibration}) < len(self.calibration):
            raise ValueError("calibration lists the same run twice")
        if isinstance(self.executor, dict):
            self.executor = _build(ExecutorConfig, self.executor, "executor")
        elif not isinstance(self.executor, ExecutorConfig):
            raise ValueError(f"executor must be a table, got {self.executor!r}")
        if self.fit_max_nfev < 10:
            raise ValueError(f"fit_max_nfev must be >= 10, got {self.fit_max_nfev}")
        if self.n_star_max < max(self.n_envs):
            raise ValueError(f"n_star_max must be >= max(n_envs) = {max(self.n_envs)}")

    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentConfig":
        """Build from a mapping; unknown keys are an error naming the key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown experiment config key(s) {unknown}; known: {sorted(known)}")
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
