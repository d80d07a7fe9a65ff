"""The takeoff experiment (issue 19): how fast does the RS log-odds take off at each prior, per RL algorithm?

Short N = 1 runs (plus held-out environments) at several priors p0, one stage-1 model per (p0, seed) shared
by every arm (stage 1 does not depend on the RL algorithm; the organisms' stage-1 cache key holds no RL field),
trained under each arm (optimizer, advantage scaling, learning rate). Per run, the early growth rate of logit p
on the trained environment with its standard error (:func:`physrl.fitting.takeoff_rate`); per arm, the exponent
γ of rate ∝ [p0 (1 − p0)]^γ with a 95% interval from a bootstrap over stage-1 models
(:func:`physrl.fitting.selection_exponent`). γ = 1 is the post's replicator flow (docs/model.md §9), γ = 0 a
takeoff that does not depend on the prior.

Plan → train → analyse → report, through the diversity experiment's machinery: runs go to
``DIR/runs/<run_id>`` and are trained by :func:`physrl.experiment.runs.train_planned` (executor, skip finished,
resume unfinished, the organisms' run lock); a rerun of the same command resumes. Outputs: ``DIR/experiment.json``
(the resolved config), ``DIR/eval_counts.csv`` (the eval counts on the trained environment per eval step, enough
to recompute everything), ``DIR/rates.csv`` (one row per run), ``DIR/takeoff.png`` and ``DIR/summary.json``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from physrl._util import toml as _toml

from .config import _build, _is_list, refuse_unknown_keys
from .executors import ExecutorConfig, check_population_size
from .runs import refuse_mixed_configs, run_status, train_planned

KIND = "takeoff"
OPTIMIZERS = ("adamw", "sgd")
SCALE_REWARDS = ("group", "batch", "none")


@dataclass
class TakeoffArm:
    """One RL algorithm of the takeoff experiment (docs/organisms.md, "The RL algorithm as a knob").

    Attributes
    ----------
    name : str
        Label used in run ids and the summary (letters, digits, ``-`` and ``_``).
    optimizer : {"adamw", "sgd"}
    scale_rewards : {"group", "batch", "none"}
        TRL GRPOConfig ``scale_rewards``.
    learning_rate : float
        The GRPO learning rate (measured per arm: docs/organisms.md, "SGD learning rate, measured").
    momentum : float
        SGD momentum in [0, 1); 0 with adamw.
    """

    name: str
    optimizer: str
    scale_rewards: str
    learning_rate: float
    momentum: float = 0.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ValueError(f"arms.name must be letters, digits, '-' or '_', got {self.name!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"arms.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"arms.scale_rewards must be one of {SCALE_REWARDS}, got {self.scale_rewards!r}")

    def organism_overrides(self) -> dict:
        return {"optimizer": self.optimizer, "scale_rewards": self.scale_rewards,
                "learning_rate": float(self.learning_rate), "momentum": float(self.momentum)}


def _default_arms() -> list[TakeoffArm]:
    return [TakeoffArm("adamw-group", "adamw", "group", 2e-4), TakeoffArm("sgd-none", "sgd", "none", 0.1)]


@dataclass
class TakeoffConfig:
    """The takeoff experiment's configuration (``kind = "takeoff"`` in a config file).

    Attributes
    ----------
    kind : str
        Always ``"takeoff"`` (what ``physrl experiment`` dispatches on).
    name : str
        A label.
    p0 : list of float
        Priors, each in (0, 1).
    seeds : list of int
        Stage-1 models per prior: one per (p0, seed), shared by every arm.
    arms : list of TakeoffArm
        RL algorithms; every arm trains every (p0, seed).
    n_heldout : int
        Held-out environments per run (w = 0); the runs train N = 1.
    vary_family_seed : bool
        If true each seed has its own digit maps (``family_seed = organism.family_seed + seed``).
    organism : dict
        Overrides of the organism config shared by every run (``max_steps``, ``eval_every``, ...).
    executor : ExecutorConfig
    p_stop : float
        The takeoff window ends at the first eval point with p̂ ≥ p_stop (:func:`fitting.takeoff_rate`).
    max_step : int or None
        Eval points after this optimizer step are not used for the rate.
    bootstrap : int
        Bootstrap draws over stage-1 models for γ's interval (>= 100).
    """

    kind: str = KIND
    name: str = "takeoff"
    p0: list[float] = field(default_factory=lambda: [0.02, 0.04, 0.08, 0.16, 0.32])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    arms: list[TakeoffArm] = field(default_factory=_default_arms)
    n_heldout: int = 2
    vary_family_seed: bool = True
    organism: dict = field(default_factory=dict)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    p_stop: float = 0.5
    max_step: int | None = None
    bootstrap: int = 2000

    def __post_init__(self):
        if self.kind != KIND:
            raise ValueError(f"kind must be {KIND!r}, got {self.kind!r}")
        if not _is_list(self.p0, (int, float)) or any(not 0 < p < 1 for p in self.p0):
            raise ValueError(f"p0 must be a non-empty list of priors in (0, 1), got {self.p0!r}")
        self.p0 = sorted({float(p) for p in self.p0})
        if not _is_list(self.seeds, int) or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {self.seeds!r}")
        self.seeds = sorted(set(self.seeds))
        if not isinstance(self.arms, list) or not self.arms:
            raise ValueError(f"arms must be a non-empty list of {{name, optimizer, scale_rewards, learning_rate}} "
                             f"tables, got {self.arms!r}")
        self.arms = [a if isinstance(a, TakeoffArm) else _build(TakeoffArm, a, "arms") for a in self.arms]
        if len({a.name for a in self.arms}) < len(self.arms):
            raise ValueError(f"arms repeat a name: {[a.name for a in self.arms]}")
        if not isinstance(self.n_heldout, int) or isinstance(self.n_heldout, bool) or self.n_heldout < 0:
            raise ValueError(f"n_heldout must be an integer >= 0, got {self.n_heldout!r}")
        if not isinstance(self.vary_family_seed, bool):
            raise ValueError(f"vary_family_seed must be true or false, got {self.vary_family_seed!r}")
        if not isinstance(self.organism, dict):
            raise ValueError(f"organism must be a table of organism config fields, got {self.organism!r}")
        clash = sorted({"n_envs", "p0", "seed", "n_heldout", "optimizer", "scale_rewards", "learning_rate",
                        "momentum"} & set(self.organism))
        if clash:
            raise ValueError(f"[organism] may not set {clash}: the design sets them per run (p0, seeds, arms)")
        if isinstance(self.executor, dict):
            self.executor = _build(ExecutorConfig, self.executor, "executor")
        check_population_size(self.organism, self.executor)
        if not 0 < self.p_stop < 1:
            raise ValueError(f"p_stop must lie in (0, 1), got {self.p_stop!r}")
        if self.max_step is not None and (not isinstance(self.max_step, int) or self.max_step < 1):
            raise ValueError(f"max_step must be an integer >= 1 or absent, got {self.max_step!r}")
        if not isinstance(self.bootstrap, int) or self.bootstrap < 100:
            raise ValueError(f"bootstrap must be an integer >= 100, got {self.bootstrap!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "TakeoffConfig":
        """Build from a mapping; unknown keys are an error naming the key."""
        refuse_unknown_keys(cls, data, "takeoff config")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> "TakeoffConfig":
        """Read a TOML file. Raises ValueError on a parse error or a bad value (named)."""
        text = Path(path).read_text()
        try:
            data = _toml.loads(text)
        except _toml.TOMLDecodeError as err:
            raise ValueError(f"{path}: cannot parse config: {err}") from err
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TakeoffRun:
    """One run of the takeoff design: an arm trained from the stage-1 model (p0, seed)."""

    arm: TakeoffArm
    p0: float
    seed: int
    n_heldout: int
    family_seed: int | None = None

    @property
    def run_id(self) -> str:
        return f"{self.arm.name}-p{self.p0:g}-s{self.seed}"

    @property
    def stage1(self) -> str:
        """The stage-1 model's id (the bootstrap's cluster): every arm at this (p0, seed) shares it."""
        return f"p{self.p0:g}-s{self.seed}"

    def organism_overrides(self) -> dict:
        out = {"n_envs": 1, "n_heldout": self.n_heldout, "p0": self.p0, "seed": self.seed,
               **self.arm.organism_overrides()}
        if self.family_seed is not None:
            out["family_seed"] = self.family_seed
        return out


def plan_takeoff(config: TakeoffConfig) -> list[TakeoffRun]:
    """Every run of the design, in training order: seed by seed (so a stopped experiment has whole stage-1
    models done, every arm), and within a seed arm by arm over the priors (so two workers pretrain two
    different stage-1 models at once and the next arm finds them in the cache)."""
    base = None
    if config.vary_family_seed:
        from physrl.organisms import OrganismConfig

        base = int(config.organism.get("family_seed", OrganismConfig.family_seed))
    return [TakeoffRun(arm, p0, s, config.n_heldout, None if base is None else base + s)
            for s in config.seeds for arm in config.arms for p0 in config.p0]


def organism_configs(config: TakeoffConfig) -> dict[str, dict]:
    """The resolved organism config of every planned run, validated before anything trains.

    Raises
    ------
    ValueError
        A bad ``[organism]`` or arm value, naming the run and the field.
    """
    from physrl.organisms import OrganismConfig

    out = {}
    for r in plan_takeoff(config):
        try:
            out[r.run_id] = OrganismConfig(**{**config.organism, **r.organism_overrides()}).to_dict()
        except TypeError as err:
            raise ValueError(f"[organism]: {err}") from err
        except ValueError as err:
            raise ValueError(f"[organism] (run {r.run_id}): {err}") from err
    return out


def check_existing(config: TakeoffConfig, out_dir: Path) -> None:
    """Refuse finished runs in ``out_dir`` trained with another config (ValueError naming run and fields)."""
    refuse_mixed_configs(out_dir, organism_configs(config))


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    tmp.replace(path)


def train_takeoff(config: TakeoffConfig, out_dir: str | Path, *, progress: bool = True) -> dict[str, Path]:
    """Train (or resume) every run of the design; returns run_id -> run directory. Errors as
    :func:`physrl.experiment.runs.train_planned` (RuntimeError naming failed runs) and :func:`check_existing`."""
    out = Path(out_dir)
    check_existing(config, out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "experiment.json", config.to_dict())
    jobs = [(r.run_id, {**config.organism, **r.organism_overrides()}) for r in plan_takeoff(config)]
    return train_planned(config.executor, out, jobs, progress=progress, desc="takeoff runs")


def eval_counts(config: TakeoffConfig, out_dir: str | Path):
    """The eval counts on the trained environment per eval step of every finished run (pandas.DataFrame:
    ``arm, optimizer, scale_rewards, learning_rate, p0, seed, stage1, run_id`` and
    :data:`physrl.fitting.COUNT_COLUMNS`-style counts). Unfinished runs are left out."""
    import pandas as pd

    from physrl import fitting

    frames = []
    for r in plan_takeoff(config):
        run_dir = Path(out_dir) / "runs" / r.run_id
        if run_status(run_dir) != "finished":
            continue
        counts = fitting.trained_eval_counts(fitting.load_runs([run_dir])[0])
        meta = {"arm": r.arm.name, "optimizer": r.arm.optimizer, "scale_rewards": r.arm.scale_rewards,
                "learning_rate": r.arm.learning_rate, "p0": r.p0, "seed": r.seed, "stage1": r.stage1,
                "run_id": r.run_id}
        frames.append(counts.assign(**meta)[list(meta) + list(counts.columns)])
    if not frames:
        return pd.DataFrame(columns=["arm", "optimizer", "scale_rewards", "learning_rate", "p0", "seed", "stage1",
                                     "run_id", "step", "n", "n_rs", "a_n", "a_sum", "b_n", "b_sum"])
    return pd.concat(frames, ignore_index=True)


def takeoff_rates(counts, *, p_stop: float = 0.5, max_step: int | None = None):
    """One row per run of an eval-count table (:func:`eval_counts`'s columns): the run's keys and
    :func:`physrl.fitting.takeoff_rate`'s rate (logit p per optimizer step), stderr, window and stop reason."""
    import pandas as pd

    from physrl import fitting

    rows = []
    keys = ["arm", "optimizer", "scale_rewards", "learning_rate", "p0", "seed", "stage1", "run_id"]
    for key, g in counts.groupby(keys, sort=False):
        r = fitting.takeoff_rate(g, run_id=key[-1], p_stop=p_stop, max_step=max_step)
        rows.append({**dict(zip(keys, key)), "rate": r.rate, "stderr": r.stderr, "p0_hat": r.p0_hat,
                     "n_points": r.n_points, "window_end": r.steps[-1] if r.steps else None, "stop": r.stop})
    return pd.DataFrame(rows)


def _finite(x) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def arm_summaries(config: TakeoffConfig, rates) -> list[dict]:
    """Per arm: ``{name, optimizer, scale_rewards, learning_rate, gamma: {value, interval_95}, scale, n_p0,
    n_stage1_models, n_runs, n_runs_planned, rate_by_p0}`` (γ None when fewer than two priors have a rate)."""
    import numpy as np

    from physrl import fitting

    out = []
    for arm in config.arms:
        g = rates[rates["arm"] == arm.name] if len(rates) else rates
        entry = {"name": arm.name, "optimizer": arm.optimizer, "scale_rewards": arm.scale_rewards,
                 "learning_rate": arm.learning_rate, "momentum": arm.momentum}
        try:
            if not len(g):
                raise ValueError("no finished run: γ needs runs at two or more priors with a finite rate")
            est = fitting.selection_exponent(g, n_boot=config.bootstrap, seed=0)
            d = est.to_dict()
            entry.update({"gamma": {"value": _finite(d["gamma"]["value"]),
                                    "interval_95": [_finite(v) for v in d["gamma"]["interval_95"]]},
                          "scale": _finite(d["scale"]), "n_p0": d["n_p0"], "n_stage1_models": d["n_stage1_models"],
                          "n_runs": d["n_runs"], "n_boot": d["n_boot"]})
        except (ValueError, KeyError) as err:
            finite = g[np.isfinite(g["rate"].astype(float))] if len(g) else g
            entry.update({"gamma": {"value": None, "interval_95": [None, None]}, "scale": None,
                          "n_p0": int(finite["p0"].nunique()) if len(finite) else 0,
                          "n_stage1_models": int(finite["stage1"].nunique()) if len(finite) else 0,
                          "n_runs": len(finite), "note": str(err)})
        entry["n_runs_planned"] = len(config.p0) * len(config.seeds)
        by_p0 = []
        for p0 in config.p0:
            h = g[(g["p0"] == p0) & np.isfinite(g["rate"].astype(float))] if len(g) else g
            if len(h):
                w = 1 / np.maximum(h["stderr"].to_numpy(float), 1e-3) ** 2
                mean = float(np.sum(w * h["rate"].to_numpy(float)) / w.sum())
                by_p0.append({"p0": p0, "rate": mean, "stderr": float(1 / math.sqrt(w.sum())), "n_runs": len(h)})
        entry["rate_by_p0"] = by_p0
        out.append(entry)
    return out


def takeoff_figure(config: TakeoffConfig, rates, arms: list[dict], path: Path, partial: str = "") -> Path:
    """Rate against p0 on log-log axes per arm (runs as points with ±SE, the inverse-variance mean per prior, the
    fitted power law), with the slopes γ = 1 (the post's) and γ = 0 drawn through the arm's mean rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    fig, axes = plt.subplots(1, len(arms), figsize=(4.6 * len(arms), 4.2), sharey=True, squeeze=False)
    grid = np.geomspace(min(config.p0) / 1.3, max(config.p0) * 1.3, 100)
    x = grid * (1 - grid)
    floor = 2e-3
    for ax, arm in zip(axes[0], arms):
        g = rates[rates["arm"] == arm["name"]] if len(rates) else rates
        jitter = {s: 1 + 0.04 * (i - 1.5) for i, s in enumerate(config.seeds)}
        for row in g.itertuples():
            if not math.isfinite(row.rate):
                continue
            xp = row.p0 * jitter.get(row.seed, 1.0)
            y = max(row.rate, floor)
            ax.errorbar(xp, y, yerr=[[min(row.stderr, y - floor * 0.999)], [row.stderr]], fmt="o", ms=3,
                        color="0.55", alpha=0.7, lw=0.8, mfc="none" if row.rate <= 0 else "0.55")
        means = arm.get("rate_by_p0") or []
        if means:
            mp = np.array([m["p0"] for m in means])
            mr = np.array([m["rate"] for m in means])
            ms = np.array([m["stderr"] for m in means])
            shown = np.maximum(mr, floor)
            ax.errorbar(mp, shown, yerr=[np.minimum(ms, shown - floor * 0.999), ms], fmt="s", color="C0", ms=6,
                        capsize=3, label="inverse-variance mean per prior (±SE)")
            pos = mr > 0
            if pos.any():  # reference slopes through the geometric mean of the positive means
                xm = np.exp(np.mean(np.log(mp[pos] * (1 - mp[pos]))))
                ym = np.exp(np.mean(np.log(mr[pos])))
                ax.plot(grid, ym * (x / xm) ** 1.0, "k--", lw=1, label="γ = 1 (the post's replicator)")
                ax.plot(grid, ym * (x / xm) ** 0.0, "k:", lw=1, label="γ = 0 (prior-independent)")
        gam = arm["gamma"]
        if gam["value"] is not None and arm.get("scale"):
            lo, hi = gam["interval_95"]
            ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else ""
            ax.plot(grid, arm["scale"] * x ** gam["value"], "C3-", lw=1.5, label=f"fit: γ = {gam['value']:.2f}{ci}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(config.p0)
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("prior p0")
        ax.set_title(f"{arm['name']} (lr {arm['learning_rate']:g}): {arm['n_runs']} runs, "
                     f"{arm['n_stage1_models']} stage-1 models, {arm['n_p0']} priors", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
        ax.grid(True, which="both", alpha=0.2)
    axes[0][0].set_ylabel("takeoff rate: d logit p / d step\n(rates ≤ 0 drawn at the floor, open)")
    title = "Takeoff of RS log-odds against the prior (N = 1): rate ∝ [p0(1−p0)]^γ, 95% over stage-1 models"
    if partial:
        title += f"\nPARTIAL: {partial}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def analyse_takeoff(config: TakeoffConfig, out_dir: str | Path, *, allow_partial: bool = False) -> dict:
    """Measure rates and γ per arm from the finished runs and write eval_counts.csv, rates.csv, takeoff.png and
    summary.json; returns the summary.

    Raises
    ------
    RuntimeError
        A planned run is not finished and ``allow_partial`` is false. With ``allow_partial`` the summary's
        ``complete`` is false, ``n_runs_finished`` says how many of ``n_runs_planned`` are done, and only the
        seeds whose every (arm, p0) run finished enter (``seeds_analysed``): a balanced design, so the bootstrap
        over stage-1 models resamples the same number of models at every prior.
    """
    out = Path(out_dir)
    plan = plan_takeoff(config)
    finished = [r for r in plan if run_status(out / "runs" / r.run_id) == "finished"]
    if len(finished) < len(plan) and not allow_partial:
        raise RuntimeError(f"{len(plan) - len(finished)} of {len(plan)} takeoff runs are not finished "
                           "(rerun the command to train them)")
    counts = eval_counts(config, out)
    complete_seeds = sorted(s for s in config.seeds
                            if all(r in finished for r in plan if r.seed == s))
    if len(finished) < len(plan):  # a balanced subset: only seeds whose every (arm, p0) run finished
        counts = counts[counts["seed"].isin(complete_seeds)].reset_index(drop=True)
    counts.to_csv(out / "eval_counts.csv", index=False)
    rates = takeoff_rates(counts, p_stop=config.p_stop, max_step=config.max_step)
    rates.to_csv(out / "rates.csv", index=False)
    arms = arm_summaries(config, rates)
    partial = ("" if len(finished) == len(plan) else f"{len(finished)} of {len(plan)} planned runs finished; "
               f"seeds {complete_seeds} analysed (every arm and prior finished)")
    takeoff_figure(config, rates, arms, out / "takeoff.png", partial)
    resolved = organism_configs(config)
    any_run = next(iter(resolved.values()))
    summary = {
        "kind": KIND, "name": config.name, "complete": len(finished) == len(plan),
        "n_runs_planned": len(plan), "n_runs_finished": len(finished),
        "seeds_analysed": complete_seeds if len(finished) < len(plan) else config.seeds,
        "design": {"p0": config.p0, "seeds": config.seeds, "n_envs": 1, "n_heldout": config.n_heldout,
                   "max_steps": any_run["max_steps"], "eval_every": any_run["eval_every"],
                   "eval_prompts_per_env": any_run["eval_prompts_per_env"],
                   "num_generations": any_run["num_generations"], "p_stop": config.p_stop,
                   "max_step": config.max_step, "bootstrap": config.bootstrap,
                   "stage1_models": sorted({r.stage1 for r in plan})},
        "arms": arms,
        "law": "rate = C [p0 (1 - p0)]^gamma (fitting.selection_exponent); gamma = 1 the post's replicator",
    }
    _write_json(out / "summary.json", summary)
    return summary


def run_takeoff(config: TakeoffConfig, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Train (or resume) the design, then analyse it (:func:`train_takeoff`, :func:`analyse_takeoff`); the
    summary also records the wall seconds of this call."""
    t0 = time.perf_counter()
    train_takeoff(config, out_dir, progress=progress)
    summary = analyse_takeoff(config, out_dir)
    summary["seconds"] = time.perf_counter() - t0
    _write_json(Path(out_dir) / "summary.json", summary)
    return summary
