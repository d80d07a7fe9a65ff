"""The rollout-log contract (docs/rollouts.md): one schema, one typed manifest, one writer, one reader.

Organisms write runs with it, fitting reads them with it, and any other RL
framework whose logs are converted to it can be fitted too. This module is a
leaf: it imports no other module of physrl.

A run is a directory::

    RUN/
      manifest.json              a :class:`Manifest` (written at start, updated at the end)
      rollouts/part-*.parquet    every rollout, appended in chunks (:class:`ChunkWriter`)

or one table file (``.parquet``, ``.csv``, ``.jsonl``) with the same columns,
its manifest optional (``<stem>.manifest.json`` or ``manifest.json`` beside it).

Contents
--------
- the schema: :data:`COLUMNS` (name -> logical type), :data:`SCHEMA` (canonical Arrow);
- the manifest: :class:`Manifest`, :class:`Environment`, :func:`read_manifest`,
  :func:`write_manifest`, :func:`update_manifest`;
- writing: :func:`atomic_write_bytes`, :class:`ChunkWriter`, :func:`write_run`;
- reading: :func:`read_table`, :func:`read_rollouts`, :func:`load_runs`, :class:`Run`
  (with the measured prior, :meth:`Run.measured_prior`), :class:`LogValidationError`;
- :func:`jeffreys_interval` for binomial proportions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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


def write_manifest(run_dir: str | Path, manifest: Manifest | dict) -> Manifest:
    """Validate ``manifest`` and write ``run_dir/manifest.json`` atomically; returns it typed.

    Raises
    ------
    LogValidationError
        If the manifest breaks the contract (nothing is written).
    """
    path = Path(run_dir) / "manifest.json"
    typed = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest, path)
    typed.__post_init__()
    atomic_write_bytes(path, json.dumps(typed.to_dict(), indent=2, sort_keys=True).encode())
    return typed


def update_manifest(run_dir: str | Path, **changes: Any) -> Manifest:
    """Merge ``changes`` into ``run_dir/manifest.json`` and write it back atomically.

    Top-level keys are replaced, except ``organisms`` (the producer
    namespace), whose keys are merged into the existing ones.
    """
    path = Path(run_dir) / "manifest.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if key == ORGANISMS and isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        elif isinstance(value, Manifest):
            raise TypeError("update_manifest takes field values, not a Manifest")
        else:
            data[key] = [e.to_dict() for e in value] if key == "environments" else value
    return write_manifest(run_dir, data)


# ---- writing -----------------------------------------------------------------------------------
def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and an atomic rename.

    A reader (or a crash at any moment) sees the old file or the new one, never half of one.
    """
    path = Path(path)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _atomic_write_table(path: Path, table: pa.Table) -> None:
    tmp = _tmp_name(path)
    with open(tmp, "wb") as fh:
        pq.write_table(table, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def chunk_paths(run_dir: str | Path) -> list[Path]:
    """The run's complete chunks ``rollouts/part-*.parquet`` in name order (temporary files excluded)."""
    return sorted(p for p in (Path(run_dir) / "rollouts").glob("part-*.parquet")
                  if not p.name.startswith(".") and not p.name.endswith(".tmp"))


def rows_on_disk(run_dir: str | Path) -> int:
    """Rows in the run's chunks, from the Parquet footers (no data read)."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in chunk_paths(run_dir))


class ChunkWriter:
    """Buffers rollout rows and writes them as Parquet chunks under ``run_dir/rollouts`` (atomic renames).

    A flush writes one chunk ``part-<first step>-<last step>-<seq>.parquet``
    (8-digit steps, 5-digit sequence) to a temporary name and renames it into
    place, so a half-written chunk is never read. A producer flushes whole
    (step, phase, group) batches, at its checkpoints; on resume from the
    checkpoint at step k, :meth:`truncate` drops rows the resumed run will
    sample again, so no batch is duplicated or skipped.

    Parameters
    ----------
    run_dir : path
        The run directory (``rollouts/`` is created).
    run_id : str
        Written into every row.
    extra_columns : sequence of (name, pyarrow.DataType)
        The producer's own columns after the contract's (readers that do not
        know them ignore them).
    """

    def __init__(self, run_dir: str | Path, run_id: str, extra_columns: Sequence[tuple[str, pa.DataType]] = ()):
        self.dir = Path(run_dir) / "rollouts"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        clash = [n for n, _ in extra_columns if n in COLUMNS]
        if clash:
            raise ValueError(f"extra columns {clash} are contract columns")
        self.schema = pa.schema(list(SCHEMA) + [pa.field(n, t) for n, t in extra_columns])
        self._buffer: dict[str, list] = {name: [] for name in self.schema.names}
        self.n_written = 0
        self._seq = len(chunk_paths(run_dir))

    def add(self, *, step: int, phase: str, **columns: Sequence) -> None:
        """Buffer one batch of rollouts sampled at optimizer step ``step`` in ``phase``.

        ``columns`` holds every other column of the schema (``env_id``,
        ``group_id``, ``prompt``, ``completion``, ``reward``, ``rs``,
        ``rs_score`` and the extra columns), lists of equal length.

        Raises
        ------
        ValueError
            An unknown phase, a missing or unknown column, or lists of different lengths.
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        wanted = set(self.schema.names) - {"run_id", "step", "phase"}
        if set(columns) != wanted:
            raise ValueError(f"columns missing {sorted(wanted - set(columns))}, unknown {sorted(set(columns) - wanted)}")
        n = len(columns["completion"])
        for name, values in columns.items():
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} values for {n} rollouts")
        b = self._buffer
        b["run_id"] += [self.run_id] * n
        b["step"] += [int(step)] * n
        b["phase"] += [phase] * n
        for name, values in columns.items():
            b[name] += list(values)

    @property
    def pending(self) -> int:
        """Rows buffered, not yet written."""
        return len(self._buffer["step"])

    def flush(self) -> Path | None:
        """Write buffered rows as one chunk (temp name + atomic rename); returns its path, None if empty."""
        if not self.pending:
            return None
        table = pa.Table.from_pydict(self._buffer, schema=self.schema)
        steps = self._buffer["step"]
        path = self.dir / f"part-{min(steps):08d}-{max(steps):08d}-{self._seq:05d}.parquet"
        _atomic_write_table(path, table)
        self._seq += 1
        self.n_written += table.num_rows
        self._buffer = {name: [] for name in self.schema.names}
        return path

    def truncate(self, checkpoint_step: int) -> int:
        """Drop rows a run resumed from ``checkpoint_step`` will sample again; returns rows dropped.

        Kept: train rows with step < checkpoint_step and eval rows with step
        <= checkpoint_step (``checkpoint_step = -1``: nothing is kept). The
        buffer is emptied and leftover temporary files of a crash are removed.
        """
        self._buffer = {name: [] for name in self.schema.names}
        for tmp in self.dir.glob(".*.tmp"):
            tmp.unlink()
        dropped = 0
        for path in chunk_paths(self.dir.parent):
            df = pq.read_table(path).to_pandas()
            keep = (((df.phase == "train") & (df.step < checkpoint_step))
                    | ((df.phase == "eval") & (df.step <= checkpoint_step)))
            if keep.all():
                continue
            dropped += int((~keep).sum())
            if not keep.any():
                path.unlink()
            else:
                _atomic_write_table(path, pa.Table.from_pandas(df[keep], schema=pq.read_schema(path),
                                                               preserve_index=False))
        self._seq = max(self._seq, len(chunk_paths(self.dir.parent)))
        return dropped


def write_run(run_dir: str | Path, rollouts: pd.DataFrame, manifest: Manifest | dict) -> Path:
    """Write a whole run directory at once: one chunk of ``rollouts`` and the manifest (atomic renames).

    ``rollouts`` must hold the contract's columns (extras are dropped).
    Returns the run directory.

    Raises
    ------
    LogValidationError
        If the manifest breaks the contract.
    """
    run_dir = Path(run_dir)
    (run_dir / "rollouts").mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(rollouts[list(COLUMNS)], schema=SCHEMA, preserve_index=False)
    _atomic_write_table(run_dir / "rollouts" / "part-00000.parquet", table)
    write_manifest(run_dir, manifest)
    return run_dir


# ---- reading: types ----------------------------------------------------------------------------
def _is_text(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t)
            or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t)))


def _normalise_arrow(table: pa.Table, path: Path) -> pa.Table:
    """Every faithful encoding of a contract column, as its canonical Arrow type.

    Text: string, large_string, string_view, dictionary of any of them, and an
    all-null column. Integers: any signed or unsigned width. Floats: any float
    width, or integers (exact). Bool: bool. Anything else is left for the row
    check to reject by name.
    """
    columns, names = [], []
    for name, col in zip(table.column_names, table.columns):
        kind = COLUMNS.get(name)
        t = col.type
        if kind is not None and pa.types.is_dictionary(t):
            col = pc.cast(col, t.value_type)
            t = col.type
        target = None
        if kind == "string" and (_is_text(t) or pa.types.is_null(t)):
            target = pa.string()
        elif kind == "int64" and pa.types.is_integer(t):
            target = pa.int64()
        elif kind == "float64" and (pa.types.is_floating(t) or pa.types.is_integer(t)):
            target = pa.float64()
        if target is not None and t != target:
            try:
                col = pc.cast(col, target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:  # e.g. uint64 beyond int64
                raise LogValidationError(path, None, name, f"cannot be read as {kind}: {exc}") from None
        columns.append(col)
        names.append(name)
    return pa.table(columns, names=names)


def _shown(value) -> str:
    """A bad cell as a user reads it: ``nan`` / ``inf`` / ``missing`` for numbers, ``repr`` otherwise."""
    if value is None or value is pd.NA:
        return "missing (null)"
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return f"{float(value)} (not finite)"
    if isinstance(value, (np.generic,)):
        return repr(value.item())
    return repr(value)


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _coerce(df: pd.DataFrame, path: Path, arrow_types: dict[str, pa.DataType] | None,
            keep_extra: bool = False) -> pd.DataFrame:
    """Check presence and type of every contract column; return them with canonical dtypes."""
    out = {}
    for name, kind in COLUMNS.items():
        if name not in df.columns:
            raise LogValidationError(path, None, name, f"missing column (docs/rollouts.md requires {kind})")
        col = df[name]
        atype = None if arrow_types is None else arrow_types.get(name)
        if atype is not None and atype != _ARROW[kind] and not (kind == "string" and pa.types.is_null(atype)):
            raise LogValidationError(path, 0 if len(col) else None, name,
                                     f"expected {kind}, got Arrow type {atype}"
                                     + (f" ({col.iloc[0]!r})" if len(col) else ""))
        if kind == "string":
            bad = ~col.map(lambda v: isinstance(v, str)).to_numpy(bool)
            if name in NULLABLE_TEXT:
                bad &= col.notna().to_numpy(bool)  # free text may be empty/null in converted logs
            if bad.any():
                i = _first_bad(bad)
                raise LogValidationError(path, i, name, f"expected string, got {col.iloc[i]!r}")
            out[name] = col.astype(object)
        elif kind == "int64":
            is_bool = col.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(bool)
            numeric = pd.to_numeric(col, errors="coerce").to_numpy(float)
            bad = ~np.isfinite(numeric) | (numeric != np.round(numeric)) | is_bool
            if bad.any():
                i = _first_bad(bad)
                raise LogValidationError(path, i, name, f"expected int64, got {_shown(col.iloc[i])}")
            out[name] = (col.to_numpy(np.int64) if pd.api.types.is_integer_dtype(col.dtype)
                         else numeric.astype(np.int64))
        elif kind == "float64":
            is_bool = col.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(bool)
            numeric = pd.to_numeric(col, errors="coerce").to_numpy(float)
            bad = ~np.isfinite(numeric) | is_bool
            if bad.any():
                i = _first_bad(bad)
                raise LogValidationError(path, i, name, f"expected a finite float64, got {_shown(col.iloc[i])}")
            out[name] = numeric
        else:  # bool
            mapping = {True: True, False: False, "true": True, "false": False, "True": True,
                       "False": False, "TRUE": True, "FALSE": False}
            parsed = col.map(lambda v: mapping.get(v) if isinstance(v, (bool, np.bool_, str)) else None)
            bad = parsed.isna().to_numpy(bool)
            if bad.any():
                i = _first_bad(bad)
                raise LogValidationError(path, i, name, f"expected bool, got {col.iloc[i]!r}")
            out[name] = parsed.to_numpy(bool)
    frame = pd.DataFrame(out)
    for name, low, high in (("reward", 0.0, 1.0), ("rs_score", 0.0, 1.0)):
        bad = (frame[name] < low) | (frame[name] > high)
        if bad.any():
            i = _first_bad(bad.to_numpy())
            raise LogValidationError(path, i, name, f"value {float(frame[name].iloc[i])!r} outside [{low:g}, {high:g}]")
    bad = frame["step"] < 0
    if bad.any():
        i = _first_bad(bad.to_numpy())
        raise LogValidationError(path, i, "step", f"negative step {int(frame['step'].iloc[i])}")
    bad = ~frame["phase"].isin(PHASES)
    if bad.any():
        i = _first_bad(bad.to_numpy())
        raise LogValidationError(path, i, "phase", f"expected one of {PHASES}, got {frame['phase'].iloc[i]!r}")
    if keep_extra:
        for name in df.columns:
            if name not in COLUMNS:
                frame[name] = df[name].to_numpy()
    return frame


def read_table(path: str | Path, *, keep_extra: bool = False) -> pd.DataFrame:
    """Read and validate one table of rollouts (Parquet, CSV or JSON lines).

    Every faithful encoding is accepted: text as string, large_string,
    string_view, dictionary (pandas categorical) or an all-null column;
    integers of any width; booleans as bool or "true"/"false" text.

    Parameters
    ----------
    path : str or Path
        ``.parquet``, ``.csv`` or ``.jsonl``/``.ndjson`` file with the columns of docs/rollouts.md.
    keep_extra : bool
        Keep the producer's extra columns (after the contract's) instead of dropping them.

    Returns
    -------
    pandas.DataFrame
        The ten contract columns with canonical dtypes (object text,
        int64, float64, bool), then any kept extra columns.

    Raises
    ------
    LogValidationError
        Unknown suffix, an unreadable file, a missing column, a wrong type,
        reward or rs_score outside [0, 1], a negative step, or an unknown
        phase; the message names file, row (0-based data row) and column.
    FileNotFoundError
        If the file does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    arrow_types = None
    if suffix not in (".parquet", ".csv", ".jsonl", ".ndjson", ".json"):
        raise LogValidationError(path, problem=f"unknown table format {suffix!r} (expected .parquet, .csv or .jsonl)")
    try:
        if suffix == ".parquet":
            table = _normalise_arrow(pq.read_table(path), path)
            arrow_types = {f.name: f.type for f in table.schema}
            df = table.to_pandas()
        elif suffix == ".csv":
            _check_csv_delimiter(path)
            df = pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[""])
        else:
            df = pd.read_json(path, lines=True, dtype=False)
    except LogValidationError:
        raise
    except (OSError, ValueError, pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise LogValidationError(path, problem=f"cannot be read as {suffix[1:]}: {exc}") from None
    return _coerce(df, path, arrow_types, keep_extra)


def _check_csv_delimiter(path: Path) -> None:
    """A rollout CSV is comma-separated (docs/rollouts.md); one whose header is split by ``;`` or a tab (a
    spreadsheet's export in many locales) is refused naming the delimiter, instead of pandas' 'Expected 3
    fields in line 8, saw 4' or a single column named 'step;phase;...'."""
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline()
    for sep, name in ((";", "semicolons (;)"), ("\t", "tabs")):
        if header.count(sep) > header.count(","):
            raise LogValidationError(path, problem=f"the header is separated by {name}, not commas: a rollout CSV "
                                                   "is comma-separated (docs/rollouts.md); save it with ',' (pandas: "
                                                   f"pd.read_csv(path, sep={sep!r}).to_csv(path, index=False))")


def _check_no_batch_in_two_chunks(parts: list[Path], frames: list[pd.DataFrame]) -> None:
    """docs/rollouts.md: no (step, phase, group) batch is logged twice. A writer flushes whole
    batches, so one that appears in two chunks is a duplicated (e.g. copied) chunk, which
    would make a fit look more certain than it is."""
    seen: dict[tuple, Path] = {}
    for part, frame in zip(parts, frames):
        keys = frame[["step", "phase", "group_id"]].drop_duplicates()
        for row, key in zip(keys.index, keys.itertuples(index=False, name=None)):
            if key in seen:
                raise LogValidationError(part, int(row), "group_id",
                                         f"(step, phase, group) = {key} is already logged in {seen[key].name}: "
                                         "a batch logged twice (duplicated chunk?)")
            seen[key] = part


def read_rollouts(run_dir: str | Path, *, keep_extra: bool = True) -> pd.DataFrame:
    """Every rollout row of a run directory, validated, in chunk order (rows of no chunk when there is none).

    Parameters
    ----------
    run_dir : path
        A run directory (``rollouts/part-*.parquet``; temporary files are never read).
    keep_extra : bool
        Keep the producer's extra columns.

    Raises
    ------
    LogValidationError
        A chunk breaks the contract, or a batch is logged in two chunks (file, row, column named).
    """
    parts = chunk_paths(run_dir)
    frames = [read_table(p, keep_extra=keep_extra) for p in parts]
    _check_no_batch_in_two_chunks(parts, frames)
    if not frames:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in COLUMNS})
    return pd.concat(frames, ignore_index=True)


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
        inner = sorted(p.parent for p in path.glob("runs/*/manifest.json"))
        if inner:  # an experiment folder (physrl experiment / demo): its runs are one level down
            raise LogValidationError(path, field="manifest.json",
                                     problem=f"this is an experiment folder, not a run: its {len(inner)} runs are "
                                             f"in {path / 'runs'}/ (e.g. `physrl fit {path / 'runs'}/*`, or name "
                                             f"some: {inner[0]})")
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
