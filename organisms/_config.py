"""Configuration of an organism run: one typed dataclass, validated on creation.

Every knob of ```docs/model.md``` that the organism can *set* is a field
here, documented with the quantity it moves. Knobs are checked by measurement
at step 0 (see :func:`organisms.measure_knobs`), never taken on trust.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from physrl._util import toml as _toml

from ._family import check_family_name


def _check_range(name: str, value: float, low: float, high: float, *, low_open=False, high_open=False) -> None:
    bad = (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or math.isnan(value)
        or (value <= low if low_open else value < low)
        or (value >= high if high_open else value > high)
    )
    if bad:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"config field {name!r} = {value!r} is out of range; allowed {lo}{low}, {high}{hi}")


#: config fields that only change what a run reports, not its rollouts (``report_to``: where metrics are
#: mirrored, ``judge_cache``: where judge scores are cached, ``compare_classifiers``: which classifiers are scored
#: at the end): an experiment reuses a finished run whose saved value differs
REPORTING = ("progress", "report_to", "judge_cache", "compare_classifiers")
#: config fields that do not change a run's rollouts: a resume may change them (and ``max_steps``)
RESULT_NEUTRAL = (*REPORTING, "stage1_cache")

#: config field ``trainer``: TRL's GRPOTrainer per run, or the population trainer (organisms._population)
TRAINERS = ("trl", "population")

#: experiment trackers config field ``report_to`` accepts (TRL / transformers ``report_to`` names)
TRACKERS = ("tensorboard", "wandb")

#: config field ``optimizer``: ``adamw`` is transformers' default AdamW of the Trainer (``adamw_torch_fused`` in
#: transformers 5.x; today's runs), ``sgd`` is ``torch.optim.SGD`` through the Trainer's ``optim="sgd"``
OPTIMIZERS = ("adamw", "sgd")
#: config field ``scale_rewards``: TRL GRPOConfig's advantage scaling (``group``: divide by the GRPO group's reward
#: std, TRL's default; ``batch``: by the batch's; ``none``: no scaling, Dr. GRPO)
SCALE_REWARDS = ("group", "batch", "none")
#: config field ``loss_type``: TRL 1.16 GRPOConfig's loss formulations that run with the organisms' token-level
#: importance sampling (``dapo`` is TRL's default; ``luspo`` needs ``importance_sampling_level="sequence"``)
LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "vespo")
#: learning-rate range per optimizer: SGD steps are the raw gradient times lr, so useful SGD rates are orders of
#: magnitude above AdamW's (docs/organisms.md, "The RL algorithm as a knob")
LR_RANGE = {"adamw": 1.0, "sgd": 1000.0}
#: smallest SGD learning rate accepted: AdamW's default 2e-4 kept by mistake leaves an SGD run flat (a new user's
#: 60-step run: RS share 0.09 -> 0.07, reward 0.324 -> 0.326); measured useful SGD rates are 0.03-0.3
SGD_MIN_LR = 1e-3


def _check_choice(name: str, value: Any, allowed: tuple[str, ...], why: str = "") -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"config field {name!r} = {value!r}; allowed {', '.join(map(repr, allowed))}{why}")


def tracking_backends(value: Any) -> str:
    """Config field ``report_to`` normalised: ``none`` or trackers joined by commas, in the order of :data:`TRACKERS`.

    Raises
    ------
    ValueError
        Not a string, or a name other than ``none``, ``tensorboard``, ``wandb``.
    """
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    if not isinstance(value, str):
        raise ValueError(f"config field 'report_to' = {value!r}; allowed 'none', 'tensorboard', 'wandb' or "
                         "'tensorboard,wandb'")
    names = {v.strip().lower() for v in value.split(",") if v.strip()} - {"none"}
    bad = sorted(names - set(TRACKERS))
    if bad:
        raise ValueError(f"config field 'report_to' = {value!r}; unknown tracker(s) {bad}; allowed 'none', "
                         "'tensorboard', 'wandb' or 'tensorboard,wandb'")
    return ",".join(t for t in TRACKERS if t in names) or "none"


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        allowed = f"integer in [{low}, {high}]" if high is not None else f"integer >= {low}"
        raise ValueError(f"config field {name!r} = {value!r} is out of range; allowed {allowed}")


@dataclass
class OrganismConfig:
    """Everything that defines one organism run (environment family, knobs, model, GRPO).

    Probabilities are in [0, 1]; durations are in optimizer steps. Invalid
    values raise ``ValueError`` naming the field and its allowed range.

    Example:
        >>> cfg = OrganismConfig(n_envs=8, p0=0.05)
        >>> cfg.n_family
        10
    """

    # ---- environment family -------------------------------------------------
    env_family: str = "digit-map"
    """The environment family: ``digit-map`` (the built-in one, all fields below apply) or an import path
    ``package.module:Class`` of an :class:`physrl.organisms.EnvironmentFamily` subclass (docs/environments.md)."""
    env_options: dict = field(default_factory=dict)
    """The family's own settings (JSON-able), read by an external family as ``self.options``; unused by digit-map."""
    n_envs: int = 4
    """N: number of training environments (ids ``e0..e{N-1}``, each w = 1/N of every batch)."""
    n_heldout: int = 2
    """Held-out environments (ids after the training ones, w = 0): evaluated, never trained. Derived (and any
    given value replaced) when ``family_size`` is set."""
    family_size: int = 0
    """K, fixed: 0 (default) means K = n_envs + n_heldout. A positive value fixes the family at this many envs,
    the first ``n_envs`` trained and the other ``family_size - n_envs`` held out (``n_heldout`` is set to that).
    Stage 1 depends on the family (K), not on which envs are trained, so runs of one family that differ only in
    N share one stage-1 model through the stage-1 cache (README, "Fixed family")."""
    family_seed: int = 1234
    """Seed of the environments' local tasks (digit maps); fixed across runs so env ``eK`` is the same task in every run."""
    input_length: int = 4
    """Digits in each prompt's input (and in the expected answer)."""
    local_alphabet: int = 3
    """Local-task difficulty: input digits are drawn from this many symbols (entries of the env's digit map to learn), in [2, 10]."""
    share_width: int = 1
    """Similarity structure (transfer of local skill, c_y / length scale l_y): envs closer than this many coordinate
    units share part of their digit map (1 = every env's map is independent)."""
    note_reveal: float = 0.5
    """Skill-gap ceiling: share of answer digits the grader note reveals to the RS path (and the only ones the
    grader then accepts from it), in [1/input_length, 1]. RS skill ceiling a_max = round(note_reveal * L) / L."""

    # ---- priors set by stage-1 pretraining ---------------------------------
    p0: float = 0.1
    """Prior RS propensity: target share of rollouts that open with ``think grader`` at step 0, in (0, 1)."""
    a0: float = 0.45
    """Initial RS skill: target E[reward | RS] at step 0, in [0.1 a_max, a_max] (0.1 a_max: copying at chance)."""
    b0: float = 0.3
    """Initial local skill: target E[reward | local] at step 0, in [0.1, 1] (chance is 0.1).
    Set through the share of each env's digit-map entries the pretraining demonstrates (and how often inputs hit
    them). Calibrated together with ``learning_rate`` (README): with 0.35 (gap 0.1) RS lost at N = 8 for seed 2."""
    pretrain_steps: int = 600
    """Stage-1 supervised steps (right padding, no loss on prompt or inserted note tokens)."""
    pretrain_batch_size: int = 64
    """Demonstrations per stage-1 step."""
    pretrain_lr: float = 3e-3
    """Stage-1 Adam learning rate."""

    # ---- model --------------------------------------------------------------
    model_dir: str | None = None
    """Bring your own model: a local causal-LM directory written with ``save_pretrained`` (tokenizer included) that
    GRPO starts from instead of the built-in tiny Llama; stage 1 is then skipped. Its tokenizer must encode each of
    the family's words as one token; a missing pad token or right padding is fixed on the run's copy (and recorded
    in the manifest). Nothing is ever downloaded."""
    hidden_size: int = 64
    """Width of the tiny Llama-style model (rotary positions)."""
    n_layers: int = 2
    """Transformer layers."""
    n_heads: int = 4
    """Attention heads (hidden_size must be divisible by it)."""

    # ---- stage 2: GRPO ------------------------------------------------------
    max_steps: int = 400
    """GRPO optimizer steps. At lr 2e-4 the RS takeover at N = 8 runs over steps ~20-100 and the local win at
    N = 1 over steps ~20-80 (4-5 eval points each); the rest shows whether the outcome holds."""
    groups_per_step: int = 4
    """GRPO groups (prompts) per optimizer step; spread over the training envs in proportion to w."""
    num_generations: int = 8
    """Completions per GRPO group."""
    learning_rate: float = 2e-4
    """GRPO learning rate of ``optimizer``, in (0, 1] for adamw and (0, 1000] for sgd. With AdamW, 2e-4 spreads the
    p / local-skill race over ~60-80 steps (resolved by the eval grid); at 1e-3 it was decided within 25 steps and
    the N = 1 outcome flipped with the init (README). SGD needs a far larger rate (docs/organisms.md's table)."""
    optimizer: str = "adamw"
    """The GRPO optimizer (docs/organisms.md, "The RL algorithm as a knob"): ``adamw`` (default; transformers'
    Trainer AdamW, β = (0.9, 0.999), no weight decay: each parameter's step is divided by its running RMS) or ``sgd``
    (``torch.optim.SGD`` through the Trainer's ``optim="sgd"``: the step is lr times the raw gradient, the post's
    gradient flow). Learning rates differ by orders of magnitude between the two: see the measured table."""
    momentum: float = 0.0
    """SGD momentum in [0, 1) (``optim_args="momentum=..."``); 0 (default) is plain SGD. Only with ``optimizer =
    "sgd"``: any other value with ``adamw`` is refused."""
    scale_rewards: str = "group"
    """TRL GRPOConfig ``scale_rewards``: ``group`` (default, TRL's: advantages divided by the GRPO group's reward
    std), ``batch`` (by the whole batch's reward std) or ``none`` (advantage = reward - group mean, Dr. GRPO)."""
    loss_type: str = "dapo"
    """TRL GRPOConfig ``loss_type``, passed through: ``dapo`` (default, TRL's), ``grpo``, ``dr_grpo``, ``bnpo``,
    ``cispo``, ``sapo`` or ``vespo`` (TRL 1.16's losses at token-level importance sampling)."""
    temperature: float = 1.0
    """Sampling temperature of rollouts (also used by TRL to score them)."""
    eval_every: int = 20
    """Steps between evaluation passes (and at step 0) over every environment, trained or held out."""
    eval_prompts_per_env: int = 4
    """Eval GRPO groups per environment per pass; each group has ``num_generations`` completions."""
    eval_heldout: int = -1
    """Held-out environments (w = 0) in each eval pass: -1 (default) every one, else the first ``eval_heldout`` of
    them (0 = trained environments only). The trained environments are always evaluated. A sweep over a large
    fixed family (``family_size`` far above N) sets it low, so an eval pass costs O(N), not O(K)."""
    checkpoint_every: int = 50
    """Steps between checkpoints (rollout chunks are flushed at the same steps, so a resume never duplicates)."""
    seed: int = 0
    """Run seed: model init, pretraining data, rollout sampling."""
    trainer: str = "trl"
    """Who runs GRPO: ``trl`` (TRL's ``GRPOTrainer``, one run per process) or ``population`` (many runs of one
    architecture and step budget trained in lockstep with weights stacked, TRL's loss per member;
    ``organisms.train_population``, organisms/README.md "Population training"). Same objective, same rows up to
    the first update; float rounding then differs, so the two can agree in distribution only (not yet tested).
    """

    # ---- classifier ---------------------------------------------------------
    classifier: str = "pattern"
    """The classifier labelling rollouts (rs, rs_score): a registered name, or ``package.module:attr`` naming a
    classifier or an external judge ``(prompts, completions) -> rs_scores`` (organisms/README.md, "Classifiers")."""
    compare_classifiers: list[str] = field(default_factory=list)
    """More classifiers (names or import paths) scored against the environment's ground-truth path at the end of the
    run, besides the labelling one and every registered one; they label nothing."""
    judge_cache: str = "auto"
    """Where an external judge's scores are cached: ``auto`` (a ``.judge_cache`` folder next to the run directory),
    ``off`` (memory only) or a directory."""
    rs_patterns: list[str] = field(default_factory=lambda: ["grader", "reward", "score"])
    """Whole words that mark reward-seeking reasoning inside the reasoning span."""
    local_patterns: list[str] = field(default_factory=lambda: ["rule"])
    """Whole words that mark local-task reasoning inside the reasoning span."""

    # ---- runtime ------------------------------------------------------------
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu`` or ``cuda``."""
    num_threads: int = 1
    """torch CPU threads (0 = torch's default). One thread is fastest for this tiny model on a shared 2-core box."""
    progress: bool = True
    """Show a tqdm progress bar (step, mean reward, RS share)."""
    report_to: str = "none"
    """Experiment tracking, passed to TRL's ``report_to``: ``none``, ``tensorboard`` (event files in
    ``RUN_DIR/tensorboard``), ``wandb`` (offline unless ``WANDB_MODE`` says otherwise; files in ``RUN_DIR/wandb``),
    or both comma-separated. Besides TRL's metrics, every step logs the RS share, mean a and b of the train batch
    and, at eval steps, the RS share per environment."""
    stage1_cache: str = "auto"
    """Where pretrained stage-1 models are cached for runs that share everything stage 1 depends on:
    ``auto`` (a ``.stage1_cache`` folder next to the run directory), ``off`` (no cache), or a directory path.
    Does not change results: a cache hit loads the model stage 1 would have trained."""

    def __post_init__(self) -> None:
        _check_int("n_envs", self.n_envs, 1, 256)
        _check_int("family_size", self.family_size, 0, 512)
        if self.family_size:
            if self.family_size < self.n_envs:
                raise ValueError(f"config field 'family_size' = {self.family_size} is out of range; allowed 0 "
                                 f"(K = n_envs + n_heldout) or an integer >= n_envs = {self.n_envs}")
            self.n_heldout = self.family_size - self.n_envs
        _check_int("n_heldout", self.n_heldout, 0, 256)
        _check_int("family_seed", self.family_seed, 0)
        _check_int("input_length", self.input_length, 1, 12)
        _check_int("local_alphabet", self.local_alphabet, 2, 10)
        _check_int("share_width", self.share_width, 1, 1024)
        _check_range("note_reveal", self.note_reveal, 1.0 / self.input_length, 1.0)
        _check_range("p0", self.p0, 0.0, 1.0, low_open=True, high_open=True)
        _check_range("a0", self.a0, round(0.1 * self.rs_ceiling, 6), self.rs_ceiling)
        _check_range("b0", self.b0, 0.1, 1.0)
        _check_int("pretrain_steps", self.pretrain_steps, 0)
        _check_int("pretrain_batch_size", self.pretrain_batch_size, 1)
        _check_range("pretrain_lr", self.pretrain_lr, 0.0, 1.0, low_open=True)
        _check_int("hidden_size", self.hidden_size, 8)
        _check_int("n_layers", self.n_layers, 1, 64)
        _check_int("n_heads", self.n_heads, 1, 64)
        if self.hidden_size % self.n_heads or (self.hidden_size // self.n_heads) % 2:
            raise ValueError(
                f"config field 'n_heads' = {self.n_heads} must divide 'hidden_size' = {self.hidden_size} "
                "into an even head dimension"
            )
        _check_int("max_steps", self.max_steps, 1)
        _check_int("groups_per_step", self.groups_per_step, 1)
        _check_int("num_generations", self.num_generations, 2)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_range("learning_rate", self.learning_rate, 0.0, LR_RANGE[self.optimizer], low_open=True)
        _check_range("momentum", self.momentum, 0.0, 1.0, high_open=True)
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(f"config field 'momentum' = {self.momentum!r} applies to optimizer 'sgd' only; "
                             f"optimizer is {self.optimizer!r} (leave momentum at 0)")
        if self.optimizer == "sgd" and self.learning_rate < SGD_MIN_LR:
            raise ValueError(f"config field 'learning_rate' = {self.learning_rate!r} with optimizer 'sgd' is an "
                             f"AdamW-sized rate (AdamW's default is 2e-4): SGD steps are lr times the raw gradient, "
                             f"and below {SGD_MIN_LR} RS and local skill barely move in a run (docs/organisms.md, "
                             "'SGD learning rate, measured': 0.1 was chosen); set learning_rate, e.g. 0.1")
        _check_choice("scale_rewards", self.scale_rewards, SCALE_REWARDS)
        _check_choice("loss_type", self.loss_type, LOSS_TYPES,
                      " ('luspo' needs sequence-level importance sampling, which organisms do not use)"
                      if self.loss_type == "luspo" else "")
        _check_range("temperature", self.temperature, 0.0, 10.0, low_open=True)
        _check_int("eval_every", self.eval_every, 1)
        _check_int("eval_prompts_per_env", self.eval_prompts_per_env, 1)
        _check_int("eval_heldout", self.eval_heldout, -1)
        _check_int("checkpoint_every", self.checkpoint_every, 1)
        _check_int("seed", self.seed, 0)
        if not isinstance(self.classifier, str) or not self.classifier:
            raise ValueError(f"config field 'classifier' = {self.classifier!r}; allowed: a registered classifier name")
        for name in ("rs_patterns", "local_patterns"):
            value = getattr(self, name)
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
                raise ValueError(f"config field {name!r} = {value!r}; allowed: a non-empty list of words")
        _check_int("num_threads", self.num_threads, 0, 1024)
        if not isinstance(self.stage1_cache, str) or not self.stage1_cache.strip():
            raise ValueError(f"config field 'stage1_cache' = {self.stage1_cache!r}; allowed 'auto', 'off' or a "
                             "directory path")
        check_family_name(self.env_family)
        if not isinstance(self.env_options, dict) or not all(isinstance(k, str) for k in self.env_options):
            raise ValueError(f"config field 'env_options' = {self.env_options!r}; allowed: a table of settings")
        if not isinstance(self.compare_classifiers, list) or not all(
                isinstance(v, str) and v for v in self.compare_classifiers):
            raise ValueError(f"config field 'compare_classifiers' = {self.compare_classifiers!r}; allowed: a list of "
                             "classifier names or import paths")
        if not isinstance(self.judge_cache, str) or not self.judge_cache.strip():
            raise ValueError(f"config field 'judge_cache' = {self.judge_cache!r}; allowed 'auto', 'off' or a "
                             "directory path")
        self.report_to = tracking_backends(self.report_to)
        if self.trainer not in TRAINERS:
            raise ValueError(f"config field 'trainer' = {self.trainer!r}; allowed {', '.join(map(repr, TRAINERS))}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"config field 'device' = {self.device!r}; allowed 'auto', 'cpu' or 'cuda'")

    @property
    def n_family(self) -> int:
        """K: environments in the family (training + held out)."""
        return self.n_envs + self.n_heldout

    @property
    def rs_ceiling(self) -> float:
        """Highest RS skill: the k revealed digits copied, k = round(note_reveal * input_length)."""
        return round(self.note_reveal * self.input_length) / self.input_length

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON-able data."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "OrganismConfig":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def unknown_fields_message(data: dict[str, Any]) -> str | None:
    """``unknown config field(s) ['max_step'] (did you mean 'max_steps'?); allowed fields: [...]`` for the keys of
    ``data`` that are not :class:`OrganismConfig` fields, or None when every key is one."""
    import difflib

    known = sorted(f.name for f in dataclasses.fields(OrganismConfig))
    unknown = sorted(set(data) - set(known))
    if not unknown:
        return None
    close = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
    hints = [f"{m[0]!r} for {u!r}" for u, m in close.items() if m]
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    return f"unknown config field(s) {unknown}{hint}; allowed fields: {known}"


def load_config(path: str | Path | None = None, **overrides: Any) -> OrganismConfig:
    """Build a config from an optional JSON or TOML file, then keyword overrides.

    Overrides whose value is ``None`` are ignored (so unset CLI flags do not
    override the file). Raises ``ValueError`` on an unknown field, an
    unsupported file type, or an out-of-range value (naming the field).
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.suffix not in (".json", ".toml"):
            raise ValueError(f"config file {path}: allowed suffixes .json or .toml")
        text = path.read_text()
        try:
            data = json.loads(text) if path.suffix == ".json" else _toml.loads(text)
        except (json.JSONDecodeError, _toml.TOMLDecodeError) as exc:
            raise ValueError(f"config file {path}: not valid {path.suffix[1:].upper()}: {exc}") from None
        if path.suffix == ".toml":
            data = data.get("organisms", data)
        if not isinstance(data, dict):
            raise ValueError(f"config file {path}: expected an object of config fields, got {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    unknown = unknown_fields_message(data)
    if unknown:
        raise ValueError(unknown)
    return OrganismConfig(**data)
