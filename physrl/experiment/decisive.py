"""The decisive experiment (issue 22): N*(p0) per RL algorithm, pre-registered, stage-1 model as the unit.

The design (``physrl/configs/decisive.toml``; README, "The decisive experiment"):

- **Arms**: RL algorithms (optimizer, advantage scaling, learning rate; :class:`TakeoffArm`), every arm trained
  from the same stage-1 models (the stage-1 cache key holds no RL field), so the arms are paired.
- **Stage-1 models**: one per (p0, seed); every run of one model shares one fixed environment family of
  ``family_size`` = K environments (N trained, K − N held out), so every N of a model starts from one
  pretrained model.
- **N per stage-1 model** by a bisection written down before any run (:func:`next_probe`): on the grid
  ``n_grid`` (√2-spaced), start at the middle, go down after a win and up after a loss, stop when the largest
  N that lost and the smallest N that won are neighbours on the grid (or a grid edge is passed). So each
  stage-1 model gets ⌈log2(len(n_grid) + 1)⌉ runs or fewer, and N* per p0 is read from all of them.
- **End state** of a run: the RS share over the last ``last_evals`` eval passes on its trained environments
  (:func:`end_state`); RS wins when it exceeds ``threshold``.
- **Calibration**: runs at stage-1 models the sweep never uses (``calibration_seeds``); per arm the ODE model
  variant (selection law) is chosen on them alone by leave-one-run-out, then fitted on all of them; every
  sweep cell's P(RS wins) and the predicted slope are frozen in ``predictions.json`` (sha256 recorded) before
  any sweep run is trained (:mod:`physrl.experiment.decisive_run`).

This module holds the config, the plan and the bisection rule; training, freezing and analysis are in
:mod:`physrl.experiment.decisive_run`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from physrl._util import toml as _toml

from .config import _build, _is_list, refuse_unknown_keys
from .executors import ExecutorConfig, check_population_size
from .takeoff import TakeoffArm, _default_arms

KIND = "decisive"
SELECTION_VARIANTS = ("replicator", "power", "power+skills")


def sqrt2_grid(n_max: int) -> list[int]:
    """The √2-spaced grid of N from 1 to ``n_max``: round(2^(k/2)) for k = 0, 1, ..., duplicates dropped.

    >>> sqrt2_grid(16)
    [1, 2, 3, 4, 6, 8, 11, 16]
    """
    out, k = [], 0
    while round(2 ** (k / 2)) <= n_max:
        n = int(round(2 ** (k / 2)))
        if n not in out:
            out.append(n)
        k += 1
    return out


@dataclass
class DecisiveCalibration:
    """One calibration run per calibration seed: N trained environments at prior p0 (family of K)."""

    n_envs: int
    p0: float

    def __post_init__(self):
        if not isinstance(self.n_envs, int) or isinstance(self.n_envs, bool) or self.n_envs < 1:
            raise ValueError(f"calibration.n_envs must be an integer >= 1, got {self.n_envs!r}")
        if not isinstance(self.p0, (int, float)) or not 0 < self.p0 < 1:
            raise ValueError(f"calibration.p0 must lie in (0, 1), got {self.p0!r}")
        self.p0 = float(self.p0)


def _default_calibration() -> list[DecisiveCalibration]:
    return [DecisiveCalibration(1, 0.04), DecisiveCalibration(1, 0.32), DecisiveCalibration(4, 0.08),
            DecisiveCalibration(8, 0.16)]


@dataclass
class DecisiveConfig:
    """The decisive experiment's configuration (``kind = "decisive"`` in a config file).

    Attributes
    ----------
    kind : str
        Always ``"decisive"``.
    name : str
    p0 : list of float
        Priors, each in (0, 1).
    seeds : list of int
        Sweep stage-1 models per prior: one per (p0, seed), shared by every arm.
    calibration_seeds : list of int
        Stage-1 models of the calibration runs; disjoint from ``seeds``.
    calibration : list of DecisiveCalibration
        The calibration design, run at every calibration seed and by every arm.
    arms : list of TakeoffArm
        RL algorithms; the first is trained (and analysed) first.
    n_grid : list of int
        The N grid of the bisection, ascending (default the √2 grid to 16).
    family_size : int
        K, every run's family (N trained, K − N held out); > max(n_grid).
    threshold : float
        RS wins when the end state exceeds it.
    last_evals : int
        Eval passes averaged into the end state.
    variants : list of str
        Selection laws the calibration chooses among by leave-one-run-out (``fitting.fit``'s ``selection``).
    transfer : str
        ``fitting.fit``'s transfer model of every variant.
    measured_gamma : dict
        Arm name -> its measured takeoff exponent (issue 19, data/reference/takeoff), for the figure's
        second law (slope −γ); arms without one get no such line.
    continuation_share, continuation_band, continuation_max_runs, continuation_steps
        After an arm's sweep: runs whose end state lies within ``continuation_band`` of the threshold, the
        closest first, up to ``continuation_share`` of the arm's runs and at most ``continuation_max_runs``,
        are trained again from their stage-1 model to ``continuation_steps`` steps (same config, constant
        learning rate, so their first steps repeat the sweep run's).
    n_draws : int
        Parameter draws behind each frozen prediction.
    bootstrap : int
        Replicates of the cluster bootstrap (stage-1 models within each p0).
    fit_max_nfev : int or None
    organism : dict
        Organism config fields shared by every run (the design sets n_envs, p0, seed, n_heldout,
        family_size, family_seed and the arm's fields).
    executor : ExecutorConfig
    """

    kind: str = KIND
    name: str = "decisive"
    p0: list[float] = field(default_factory=lambda: [0.02, 0.04, 0.08, 0.16, 0.32])
    seeds: list[int] = field(default_factory=lambda: list(range(20)))
    calibration_seeds: list[int] = field(default_factory=lambda: [100, 101])
    calibration: list[DecisiveCalibration] = field(default_factory=_default_calibration)
    arms: list[TakeoffArm] = field(default_factory=_default_arms)
    n_grid: list[int] = field(default_factory=lambda: sqrt2_grid(16))
    family_size: int = 18
    threshold: float = 0.5
    last_evals: int = 3
    variants: list[str] = field(default_factory=lambda: ["replicator", "power"])
    transfer: str = "homogeneous"
    measured_gamma: dict = field(default_factory=dict)
    continuation_share: float = 0.1
    continuation_band: float = 0.15
    continuation_max_runs: int = 10
    continuation_steps: int = 1600
    n_draws: int = 200
    bootstrap: int = 2000
    fit_max_nfev: int | None = None
    organism: dict = field(default_factory=dict)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def __post_init__(self):
        if self.kind != KIND:
            raise ValueError(f"kind must be {KIND!r}, got {self.kind!r}")
        if not _is_list(self.p0, (int, float)) or any(not 0 < p < 1 for p in self.p0):
            raise ValueError(f"p0 must be a non-empty list of priors in (0, 1), got {self.p0!r}")
        self.p0 = sorted({float(p) for p in self.p0})
        for name in ("seeds", "calibration_seeds"):
            value = getattr(self, name)
            if not _is_list(value, int) or any(s < 0 for s in value):
                raise ValueError(f"{name} must be a non-empty list of integers >= 0, got {value!r}")
            setattr(self, name, sorted(set(value)))
        shared = sorted(set(self.seeds) & set(self.calibration_seeds))
        if shared:
            raise ValueError(f"calibration_seeds {shared} are sweep seeds too: calibration must use stage-1 models "
                             "the sweep never uses")
        if self.fit_max_nfev is not None and (not isinstance(self.fit_max_nfev, int)
                                              or isinstance(self.fit_max_nfev, bool) or self.fit_max_nfev < 10):
            raise ValueError(f"fit_max_nfev must be an integer >= 10 or absent, got {self.fit_max_nfev!r}")
        if not isinstance(self.calibration, list) or not self.calibration:
            raise ValueError(f"calibration must be a non-empty list of {{n_envs, p0}} tables, got {self.calibration!r}")
        self.calibration = [c if isinstance(c, DecisiveCalibration) else _build(DecisiveCalibration, c, "calibration")
                            for c in self.calibration]
        if len({c.p0 for c in self.calibration}) < len(self.calibration):
            raise ValueError("calibration repeats a p0: each (p0, seed) is one stage-1 model with one run")
        if len(self.calibration) * len(self.calibration_seeds) < 2:
            raise ValueError("calibration needs two or more runs (leave-one-run-out): add a calibration row or seed")
        if not isinstance(self.arms, list) or not self.arms:
            raise ValueError(f"arms must be a non-empty list of {{name, optimizer, scale_rewards, learning_rate}} "
                             f"tables, got {self.arms!r}")
        self.arms = [a if isinstance(a, TakeoffArm) else _build(TakeoffArm, a, "arms") for a in self.arms]
        if len({a.name for a in self.arms}) < len(self.arms):
            raise ValueError(f"arms repeat a name: {[a.name for a in self.arms]}")
        clash = [a.name for a in self.arms if a.name.endswith(("-long", "-cal"))]
        if clash:
            raise ValueError(f"arm names may not end in '-long' or '-cal' (run ids would collide): {clash}")
        if len({f"{p:g}" for p in self.p0}) < len(self.p0):
            raise ValueError(f"p0 values must differ in their shortest form (run ids use it): {self.p0}")
        if not _is_list(self.n_grid, int) or any(n < 1 for n in self.n_grid) or sorted(set(self.n_grid)) != self.n_grid:
            raise ValueError(f"n_grid must be an ascending list of distinct integers >= 1, got {self.n_grid!r}")
        if not isinstance(self.family_size, int) or self.family_size <= max(self.n_grid):
            raise ValueError(f"family_size must be an integer above the largest N of n_grid ({max(self.n_grid)}), "
                             f"got {self.family_size!r}")
        if max(c.n_envs for c in self.calibration) >= self.family_size:
            raise ValueError("a calibration run's n_envs must be below family_size (it needs held-out envs)")
        if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool) \
                or not 0 < self.threshold < 1:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold!r}")
        if not isinstance(self.last_evals, int) or isinstance(self.last_evals, bool) or self.last_evals < 1:
            raise ValueError(f"last_evals must be an integer >= 1, got {self.last_evals!r}")
        if not isinstance(self.variants, list) or not self.variants or any(v not in SELECTION_VARIANTS
                                                                           for v in self.variants):
            raise ValueError(f"variants must be a non-empty list of {SELECTION_VARIANTS}, got {self.variants!r}")
        if self.transfer not in ("homogeneous", "none"):
            raise ValueError(f"transfer must be 'homogeneous' or 'none' (the protocol's N-env reduction), "
                             f"got {self.transfer!r}")
        if not isinstance(self.measured_gamma, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.measured_gamma.values()):
            raise ValueError(f"measured_gamma must be a table of arm name -> number, got {self.measured_gamma!r}")
        unknown = sorted(set(self.measured_gamma) - {a.name for a in self.arms})
        if unknown:
            raise ValueError(f"measured_gamma names arms that are not in arms: {unknown}")
        for name, high in (("continuation_share", 1.0), ("continuation_band", 0.5)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= high:
                raise ValueError(f"{name} must be a number in [0, {high}], got {value!r}")
        for name, low in (("continuation_max_runs", 0), ("continuation_steps", 1), ("n_draws", 1),
                          ("bootstrap", 100)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.organism, dict):
            raise ValueError(f"organism must be a table of organism config fields, got {self.organism!r}")
        clash = sorted({"n_envs", "p0", "seed", "n_heldout", "family_size", "family_seed", "optimizer",
                        "scale_rewards", "learning_rate", "momentum"} & set(self.organism))
        if clash:
            raise ValueError(f"[organism] may not set {clash}: the design sets them per run (p0, seeds, arms, "
                             "family_size)")
        if isinstance(self.executor, dict):
            self.executor = _build(ExecutorConfig, self.executor, "executor")
        check_population_size(self.organism, self.executor)

    @classmethod
    def from_dict(cls, data: dict) -> "DecisiveConfig":
        """Build from a mapping; unknown keys are an error naming the key."""
        refuse_unknown_keys(cls, data, "decisive config")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> "DecisiveConfig":
        """Read a TOML file. Raises ValueError on a parse error or a bad value (named)."""
        try:
            data = _toml.loads(Path(path).read_text())
        except _toml.TOMLDecodeError as err:
            raise ValueError(f"{path}: cannot parse config: {err}") from err
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return asdict(self)

    def arm(self, name: str) -> TakeoffArm:
        """The arm called ``name`` (KeyError naming the known arms otherwise)."""
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"no arm {name!r}; arms: {[a.name for a in self.arms]}")

    def family_seed(self, seed: int) -> int:
        """Each stage-1 model's own digit maps: the organism's family_seed + seed."""
        from physrl.organisms import OrganismConfig

        return int(self.organism.get("family_seed", OrganismConfig.family_seed)) + int(seed)


@dataclass(frozen=True)
class DecisiveRun:
    """One organism run of the design: an arm trained from the stage-1 model (p0, seed) on N environments.

    ``role`` is ``calibration``, ``sweep`` or ``continued`` (a sweep run trained again to the continuation's
    step budget, run id ``<arm>-long-N…``)."""

    arm: str
    role: str
    n_envs: int
    p0: float
    seed: int

    @property
    def stage1(self) -> str:
        """The stage-1 model's id (the bootstrap's cluster), shared by every arm and N at this (p0, seed)."""
        return f"p{self.p0:g}-s{self.seed}"

    @property
    def run_id(self) -> str:
        tag = {"calibration": "cal-", "sweep": "", "continued": "long-"}[self.role]
        return f"{self.arm}-{tag}N{self.n_envs}-p{self.p0:g}-s{self.seed}"

    def organism(self, config: DecisiveConfig, *, max_steps: int | None = None) -> dict:
        """The run's organism config as a mapping (shared ``[organism]`` + the design's fields)."""
        out = {**config.organism, **config.arm(self.arm).organism_overrides(), "n_envs": self.n_envs,
               "p0": self.p0, "seed": self.seed, "family_size": config.family_size,
               "family_seed": config.family_seed(self.seed)}
        if self.role == "calibration":
            out["eval_heldout"] = -1  # the fit reads every held-out env (transfer c)
        if max_steps is not None:
            out["max_steps"] = int(max_steps)
        return out


def calibration_runs(config: DecisiveConfig, arm: str) -> list[DecisiveRun]:
    """The calibration runs of ``arm``: every calibration design row at every calibration seed."""
    return [DecisiveRun(arm, "calibration", c.n_envs, c.p0, s) for s in config.calibration_seeds
            for c in config.calibration]


def stage1_models(config: DecisiveConfig) -> list[tuple[float, int]]:
    """The sweep's stage-1 models (p0, seed), seed-major (so a stopped sweep has whole seeds)."""
    return [(p0, s) for s in config.seeds for p0 in config.p0]


def next_probe(history: dict[int, bool], n_points: int) -> int | None:
    """The bisection rule: the next grid index to train for one stage-1 model, or None when it is done.

    Parameters
    ----------
    history : dict
        Grid index -> whether RS won there, for the model's finished runs of one arm.
    n_points : int
        Grid length G.

    Returns
    -------
    int or None
        With ``lo`` the largest index that lost (−1 if none) and ``hi`` the smallest that won (G if none):
        ``(lo + hi) // 2`` while ``hi − lo > 1``, else None (the model's N* lies between two neighbouring grid
        points, below the grid's first point, or above its last).

    Raises
    ------
    ValueError
        A history the rule cannot have produced (a win at or below a loss).

    >>> next_probe({}, 8), next_probe({3: False}, 8), next_probe({3: True, 1: False}, 8)
    (3, 5, 2)
    """
    lo = max([i for i, won in history.items() if not won], default=-1)
    hi = min([i for i, won in history.items() if won], default=n_points)
    if hi <= lo:
        raise ValueError(f"bisection history {history} has a win at or below a loss")
    return (lo + hi) // 2 if hi - lo > 1 else None


def bracket(history: dict[int, bool], n_grid: list[int]) -> tuple[float, float]:
    """The (largest N that lost, smallest N that won) of a finished bisection: 0 when nothing lost, inf when
    nothing won."""
    lo = max([i for i, won in history.items() if not won], default=-1)
    hi = min([i for i, won in history.items() if won], default=len(n_grid))
    return (0.0 if lo < 0 else float(n_grid[lo]), math.inf if hi >= len(n_grid) else float(n_grid[hi]))


def max_probes(n_points: int) -> int:
    """The most runs the bisection can take per stage-1 model: ⌈log2(G + 1)⌉."""
    return math.ceil(math.log2(n_points + 1))
