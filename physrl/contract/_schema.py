"""The contract's schema and manifest (docs/rollouts.md): columns and their types, the layout of a run
directory, the typed :class:`Manifest` and its validation, :class:`LogValidationError`.

The ground floor's own ground: imports nothing of physrl.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

#: version of the contract a writer of this module writes (manifest field ``contract_version``)
CONTRACT_VERSION = 1

#: the contract's columns and their logical types (docs/rollouts.md, "rollouts")
COLUMNS: dict[str, str] = {
    "run_id": "string", "step": "int64", "phase": "string", "env_id": "string",
    "group_id": "int64", "prompt": "string", "completion": "string",
    "reward": "float64", "rs": "bool", "rs_score": "float64",
}
#: text columns that may be null or empty (free text in converted logs)
NULLABLE_TEXT = ("prompt", "completion")
_ARROW = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
#: the canonical Arrow schema of the contract's columns (what this module writes)
SCHEMA = pa.schema([(name, _ARROW[kind]) for name, kind in COLUMNS.items()])
PHASES = ("train", "eval")
STATUSES = ("running", "finished", "failed")
OBSERVATION_KEYS = ("a_lo", "a_hi", "b_lo", "b_hi")
#: the producer namespace of physrl.organisms in a manifest
ORGANISMS = "organisms"


class LogValidationError(ValueError):
    """A rollout log or manifest breaks the docs/rollouts.md contract.

    Attributes
    ----------
    file : str
        The offending file (or run directory).
    row : int or None
        0-based data row within that file (None when not about one row).
    column : str or None
        The offending column, or manifest field (e.g. ``environments[1].w``).
    problem : str
        What is wrong.
    """

    def __init__(self, file, row=None, column=None, problem: str = "", *, field: str | None = None):
        self.file, self.row, self.problem = str(file), row, problem
        self.column = column if column is not None else field
        where = [self.file]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {problem}")


def now() -> str:
    """The current UTC time as an ISO-8601 string (seconds), the manifest's timestamp format."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- the manifest ------------------------------------------------------------------------------
class _FieldError(ValueError):
    """A bad manifest field; ``name`` is the field (the message starts with it quoted)."""

    def __init__(self, name: str, problem: str):
        self.name = name
        super().__init__(f"{name!r} {problem}")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Environment:
    """One environment of a run (a manifest ``environments`` entry).

    Attributes
    ----------
    env_id : str
        The id its rollouts carry in column ``env_id``.
    w : float
        Training weight in [0, 1]: the environment's share of the RL batch
        (docs/model.md §1); 0 = held out (evaluated, never trained).
    coordinates : tuple of float or None
        Position e_i for kernel transfer (docs/model.md §4); None when not given.
    observation : dict or None
        Observation-model bounds ``{"a_lo", "a_hi", "b_lo", "b_hi"}`` in reward
        units, ``0 <= lo < hi <= 1`` (docs/model.md §7): observed
        a = a_lo + (a_hi - a_lo)·σ(x), b = b_lo + (b_hi - b_lo)·σ(y).
        None means (0, 1) for both.

    Raises
    ------
    ValueError
        On a field of the wrong type or out of range (naming the field).
    """

    env_id: str
    w: float
    coordinates: tuple[float, ...] | None = None
    observation: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.env_id, str) or not self.env_id:
            raise _FieldError("env_id", f"must be a non-empty string, got {self.env_id!r}")
        if not _number(self.w) or not 0.0 <= self.w <= 1.0:
            raise _FieldError("w", f"must be a number in [0, 1] (0 = held out), got {self.w!r}")
        object.__setattr__(self, "w", float(self.w))
        if self.coordinates is not None:
            if isinstance(self.coordinates, (str, bytes)) or not isinstance(self.coordinates, Iterable):
                raise _FieldError("coordinates", f"must be a list of numbers, got {self.coordinates!r}")
            coords = tuple(self.coordinates)
            if not coords or not all(_number(c) for c in coords):
                raise _FieldError("coordinates", f"must be a non-empty list of finite numbers, got {self.coordinates!r}")
            object.__setattr__(self, "coordinates", tuple(float(c) for c in coords))
        if self.observation is not None:
            obs = self.observation
            if not isinstance(obs, dict) or set(obs) != set(OBSERVATION_KEYS):
                raise _FieldError("observation", f"must be an object with exactly the keys {list(OBSERVATION_KEYS)}, "
                                  f"got {obs!r}")
            if not all(_number(obs[k]) for k in OBSERVATION_KEYS):
                raise _FieldError("observation", f"bounds must be finite numbers, got {obs!r}")
            for lat in ("a", "b"):
                lo, hi = obs[f"{lat}_lo"], obs[f"{lat}_hi"]
                if not 0.0 <= lo < hi <= 1.0:
                    raise _FieldError("observation", f"needs 0 <= {lat}_lo < {lat}_hi <= 1, got {lo!r}, {hi!r}")
            object.__setattr__(self, "observation", {k: float(obs[k]) for k in OBSERVATION_KEYS})

    @property
    def trained(self) -> bool:
        """The environment is in the RL batch (w > 0)."""
        return self.w > 0

    def bounds(self) -> tuple[float, float, float, float]:
        """(a_lo, a_hi, b_lo, b_hi), (0, 1, 0, 1) when the manifest gives none."""
        obs = self.observation or {"a_lo": 0.0, "a_hi": 1.0, "b_lo": 0.0, "b_hi": 1.0}
        return tuple(obs[k] for k in OBSERVATION_KEYS)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"env_id": self.env_id, "w": self.w}
        if self.coordinates is not None:
            out["coordinates"] = list(self.coordinates)
        if self.observation is not None:
            out["observation"] = dict(self.observation)
        return out

    @classmethod
    def from_dict(cls, entry: Any) -> "Environment":
        """Build from a manifest entry; unknown keys are ignored.

        Raises
        ------
        ValueError
            A missing ``env_id`` or ``w``, or a bad value (the message starts with the field's name).
        """
        if not isinstance(entry, dict):
            raise ValueError(f"an environment is an object, got {entry!r}")
        for key, meaning in (("env_id", "the id its rollouts carry"),
                             ("w", "the training weight in [0, 1], 0 for a held-out environment; it has no default")):
            if key not in entry:
                raise _FieldError(key, f"is missing ({meaning})")
        return cls(entry["env_id"], entry["w"], entry.get("coordinates"), entry.get("observation"))


class _Environments:
    """``env_ids`` and ``trained_env_ids`` of a holder of ``environments`` (Manifest, Run)."""

    environments: list[Environment]

    @property
    def env_ids(self) -> list[str]:
        return [e.env_id for e in self.environments]

    @property
    def trained_env_ids(self) -> list[str]:
        """Ids of the environments with w > 0."""
        return [e.env_id for e in self.environments if e.w > 0]


def _opt(value, check, what: str, name: str):
    if value is not None and not check(value):
        raise _FieldError(name, f"must be {what}, got {value!r}")


@dataclass
class Manifest(_Environments):
    """What a run was: the typed content of ``manifest.json`` (docs/rollouts.md, "manifest.json").

    Required: ``run_id``, ``status`` and ``environments``. Everything else is
    optional. Fields a producer alone understands go under one namespaced key
    named for it (physrl.organisms writes ``"organisms": {...}``); readers
    ignore keys they do not know (they are kept, in ``extra``, and written back).

    Attributes
    ----------
    run_id : str
        The run's id; every rollout row carries it.
    status : {"running", "finished", "failed"}
        A run that is not finished is still readable (its rows present).
    environments : list of Environment
        Every environment of the run, trained (w > 0) or held out (w = 0).
    created, finished : str or None
        ISO-8601 timestamps (start, and end of the last segment).
    seed : int or None
        The run's seed.
    steps : int or None
        Optimizer steps the run is configured for.
    p0 : float or None
        A prior the producer *set* exactly, in (0, 1) (e.g. a simulation's
        truth). Producers that only target a prior leave it out; the measured
        prior is :meth:`Run.measured_prior`.
    rows_written : int or None
        Rollout rows in the run's chunks when it finished (cumulative over
        resumed segments); a reader checks it against the rows present.
    classifier : dict or None
        ``{"name": str, "version": str}`` of the RS classifier that labelled ``rs``.
    model : dict or None
        The policy's description (e.g. ``architecture``, ``n_parameters``).
    versions : dict or None
        Package -> version string of what produced the run.
    error : str or None
        Why a failed run stopped.
    organisms : dict or None
        physrl.organisms' own fields (its config, targets, per-env task details ...).
    contract_version : int
        Version of this contract the manifest follows.
    extra : dict
        Other top-level keys, kept as they are.

    Raises
    ------
    ValueError
        On a missing required field or a field of the wrong type or range (naming it).
    """

    run_id: str
    status: str
    environments: list[Environment]
    created: str | None = None
    finished: str | None = None
    seed: int | None = None
    steps: int | None = None
    p0: float | None = None
    rows_written: int | None = None
    classifier: dict[str, str] | None = None
    model: dict[str, Any] | None = None
    versions: dict[str, str] | None = None
    error: str | None = None
    organisms: dict[str, Any] | None = None
    contract_version: int = CONTRACT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str) or not self.run_id:
            raise _FieldError("run_id", f"must be a non-empty string, got {self.run_id!r}")
        if self.status not in STATUSES:
            raise _FieldError("status", f"must be one of {STATUSES}, got {self.status!r}")
        if not isinstance(self.environments, list) or not self.environments:
            raise _FieldError("environments", "must be a non-empty list (every env: env_id, w, ...)")
        if not all(isinstance(e, Environment) for e in self.environments):
            raise _FieldError("environments", "must hold Environment entries")
        ids = [e.env_id for e in self.environments]
        dup = sorted({e for e in ids if ids.count(e) > 1})
        if dup:
            raise _FieldError("environments", f"lists env_id {dup} more than once")
        total = math.fsum(e.w for e in self.environments)
        if total > 1 + 1e-6:  # shares of one batch (docs/model.md §1); 1e-6 lets rounded 1/N values through
            raise _FieldError("environments", f"w sums to {total:.6g} over the environments, but each w is the "
                              "environment's share of the RL batch, so they sum to at most 1 (w = 1/N for N "
                              "trained environments)")
        is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        _opt(self.created, lambda v: isinstance(v, str), "a timestamp string", "created")
        _opt(self.finished, lambda v: isinstance(v, str), "a timestamp string", "finished")
        _opt(self.seed, is_int, "an integer", "seed")
        _opt(self.steps, lambda v: is_int(v) and v >= 0, "an integer >= 0", "steps")
        _opt(self.p0, lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)", "p0")
        _opt(self.rows_written, lambda v: is_int(v) and v >= 0, "an integer >= 0", "rows_written")
        _opt(self.classifier, lambda v: isinstance(v, dict) and isinstance(v.get("name"), str)
             and isinstance(v.get("version"), str), 'an object {"name": str, "version": str}', "classifier")
        _opt(self.model, lambda v: isinstance(v, dict), "an object", "model")
        _opt(self.versions, lambda v: isinstance(v, dict), "an object", "versions")
        _opt(self.error, lambda v: isinstance(v, str), "a string", "error")
        _opt(self.organisms, lambda v: isinstance(v, dict), "an object", ORGANISMS)
        _opt(self.contract_version, lambda v: is_int(v) and v >= 1, "an integer >= 1", "contract_version")
        if self.contract_version > CONTRACT_VERSION:
            raise _FieldError("contract_version", f"{self.contract_version} is newer than this reader's "
                              f"{CONTRACT_VERSION}; update physrl")

    def environment(self, env_id: str) -> Environment:
        """The entry of ``env_id``; ``KeyError`` if the manifest does not list it."""
        for e in self.environments:
            if e.env_id == env_id:
                return e
        raise KeyError(env_id)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (optional fields that are None are left out)."""
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "environments":
                value = [e.to_dict() for e in value]
            if value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "manifest.json") -> "Manifest":
        """Validate and type a manifest's JSON content.

        Raises
        ------
        LogValidationError
            Naming ``source`` and the field, on a missing required field or a bad value.
        """
        if not isinstance(data, dict):
            raise LogValidationError(source, problem=f"a manifest is a JSON object, got {type(data).__name__}")
        for key, meaning in (("run_id", "the run's id"), ("status", f"one of {STATUSES}"),
                             ("environments", "the list of environments (env_id, w, ...)")):
            if key not in data:
                raise LogValidationError(source, field=key, problem=f"missing ({meaning}; docs/rollouts.md)")
        listed = data["environments"]
        if not isinstance(listed, list) or not listed:
            raise LogValidationError(source, field="environments",
                                     problem=f"must be a non-empty list of environments, got {listed!r}")
        envs = []
        for i, entry in enumerate(listed):
            try:
                envs.append(Environment.from_dict(entry))
            except ValueError as exc:
                env = f"environment {entry['env_id']!r}" if isinstance(entry, dict) and isinstance(
                    entry.get("env_id"), str) else f"environment {i}"
                name = f"environments[{i}]" + (f".{exc.name}" if isinstance(exc, _FieldError) else "")
                raise LogValidationError(source, field=name, problem=f"{env}: {exc}") from None
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "environments"}
        kwargs = {k: data[k] for k in known if k in data}
        extra = {k: v for k, v in data.items() if k not in known and k != "environments"}
        try:
            return cls(environments=envs, extra=extra, **kwargs)
        except ValueError as exc:
            raise LogValidationError(source, field=getattr(exc, "name", None), problem=str(exc)) from None


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate ``manifest.json`` of a run directory (or a manifest file given directly).

    Raises
    ------
    FileNotFoundError
        No manifest there.
    LogValidationError
        Not valid JSON, or it breaks the contract (file and field named).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such manifest")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LogValidationError(path, problem=f"not valid JSON: {exc}") from None
    return Manifest.from_dict(data, path)


# ---- the layout of a run directory ----------------------------------------------------------------
def chunk_paths(run_dir: str | Path) -> list[Path]:
    """The run's complete chunks ``rollouts/part-*.parquet`` in name order (temporary files excluded)."""
    return sorted(p for p in (Path(run_dir) / "rollouts").glob("part-*.parquet")
                  if not p.name.startswith(".") and not p.name.endswith(".tmp"))
