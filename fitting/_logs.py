"""Read rollout logs that follow ```docs/rollouts.md``` (the only thing ``fitting`` knows of runs).

A run is a directory ``manifest.json`` + ``rollouts/part-*.parquet``; a table
file (``.csv``, ``.jsonl``/``.ndjson``, ``.parquet``) with the same columns is
accepted too, its manifest taken from ``<stem>.manifest.json`` or a
``manifest.json`` next to it when present. Every row is validated against the
contract; the first violation raises :class:`LogValidationError` naming file,
row and column. Extra columns are ignored. Temporary chunk files (written
before their atomic rename) are never read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

#: the contract's columns (docs/rollouts.md) and their kinds
COLUMNS: dict[str, str] = {
    "run_id": "string", "step": "int64", "phase": "string", "env_id": "string",
    "group_id": "int64", "prompt": "string", "completion": "string",
    "reward": "float64", "rs": "bool", "rs_score": "float64",
}
PHASES = ("train", "eval")


class LogValidationError(ValueError):
    """A rollout log breaks the docs/rollouts.md contract.

    Attributes
    ----------
    file : str
        The offending file.
    row : int or None
        0-based data row within that file (None when the whole column is missing).
    column : str or None
        The offending column.
    """

    def __init__(self, file, row, column, problem: str):
        self.file, self.row, self.column, self.problem = str(file), row, column, problem
        where = [self.file]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {problem}")


@dataclass
class Environment:
    """One environment of a run as the manifest describes it.

    Attributes
    ----------
    env_id : str
    w : float
        Training weight (share of the RL batch; 0 = held out), docs/model.md §1.
    coordinates : tuple of float or None
        e_i for kernel transfer (docs/model.md §4); None when the manifest has none.
    """

    env_id: str
    w: float
    coordinates: tuple[float, ...] | None = None


@dataclass
class Run:
    """A validated run: its contract rows, its manifest and what was inferred.

    Attributes
    ----------
    run_id : str
    source : Path
        Run directory or table file it was read from.
    rollouts : pandas.DataFrame
        The contract's columns only (docs/rollouts.md), one row per rollout.
    manifest : dict
        ``manifest.json`` ({} when there is none).
    environments : list of Environment
        From the manifest's ``environments`` (or ``envs``) list; without one,
        w is inferred: 1/n for the n envs with train rows, 0 for the others.
    finished : bool
        The manifest's status is ``"finished"``; an unfinished run is still
        read (its rows present are used) and says so in ``notes``.
    notes : list of str
        Everything the reader assumed or noticed.
    """

    run_id: str
    source: Path
    rollouts: pd.DataFrame
    manifest: dict
    environments: list[Environment]
    finished: bool
    notes: list[str] = field(default_factory=list)

    @property
    def env_ids(self) -> list[str]:
        return [e.env_id for e in self.environments]

    @property
    def p0_hint(self) -> float | None:
        """The run's configured prior p0 from its manifest, if it states one."""
        for holder in (self.manifest, self.manifest.get("knobs_target") or {},
                       self.manifest.get("config") or {}):
            value = holder.get("p0") if isinstance(holder, dict) else None
            if isinstance(value, (int, float)) and 0 < value < 1:
                return float(value)
        return None


# ---- column validation ---------------------------------------------------------------------
def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _coerce(df: pd.DataFrame, path: Path, arrow_types: dict[str, pa.DataType] | None) -> pd.DataFrame:
    """Check presence and type of every contract column; return them with canonical dtypes."""
    out = {}
    for name, kind in COLUMNS.items():
        if name not in df.columns:
            raise LogValidationError(path, None, name, f"missing column (docs/rollouts.md requires {kind})")
        col = df[name]
        atype = None if arrow_types is None else arrow_types.get(name)
        if kind == "string":
            if atype is not None and not (pa.types.is_string(atype) or pa.types.is_large_string(atype)):
                raise LogValidationError(path, 0, name, f"expected string, got {atype}")
            bad = ~col.map(lambda v: isinstance(v, str)).to_numpy(bool)
            if name in ("prompt", "completion"):
                bad &= col.notna().to_numpy(bool)  # free text may be empty/null in converted logs
            if bad.any():
                i = _first_bad(bad)
                raise LogValidationError(path, i, name, f"expected string, got {col.iloc[i]!r}")
            out[name] = col.astype(object)
        elif kind == "int64":
            if atype is not None and not pa.types.is_integer(atype):
                raise LogValidationError(path, 0, name, f"expected int64, got {atype} ({col.iloc[0]!r})")
            values = pd.to_numeric(col, errors="coerce")
            numeric = values.to_numpy(float)
            bad = ~np.isfinite(numeric) | (numeric != np.round(numeric))
            bad |= col.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(bool)
            if bad.any():
                i = _first_bad(bad)
                raise LogValidationError(path, i, name, f"expected int64, got {col.iloc[i]!r}")
            out[name] = numeric.astype(np.int64)
        elif kind == "float64":
            if atype is not None and not (pa.types.is_floating(atype) or pa.types.is_integer(atype)):
                raise LogValidationError(path, 0, name, f"expected float64, got {atype} ({col.iloc[0]!r})")
            is_bool = col.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(bool)
            numeric = pd.to_numeric(col, errors="coerce").to_numpy(float)
            bad = ~np.isfinite(numeric) | is_bool
            if bad.any():
                i = _first_bad(bad)
                raise LogValidationError(path, i, name, f"expected float64, got {col.iloc[i]!r}")
            out[name] = numeric
        else:  # bool
            if atype is not None and not pa.types.is_boolean(atype):
                raise LogValidationError(path, 0, name, f"expected bool, got {atype} ({col.iloc[0]!r})")
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
    return frame


def read_table(path: str | Path) -> pd.DataFrame:
    """Read and validate one table of rollouts (Parquet, CSV or JSON lines).

    Parameters
    ----------
    path : str or Path
        ``.parquet``, ``.csv`` or ``.jsonl``/``.ndjson`` file with the columns of docs/rollouts.md.

    Returns
    -------
    pandas.DataFrame
        The ten contract columns (extra columns dropped), canonical dtypes.

    Raises
    ------
    LogValidationError
        Missing column, wrong type, reward or rs_score outside [0, 1], negative
        step, or unknown phase; the message names file, row (0-based data row)
        and column.
    FileNotFoundError
        If the file does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    arrow_types = None
    try:
        if suffix == ".parquet":
            table = pq.read_table(path)
            arrow_types = {f.name: f.type for f in table.schema}
            df = table.to_pandas()
        elif suffix == ".csv":
            df = pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[""])
        elif suffix in (".jsonl", ".ndjson", ".json"):
            df = pd.read_json(path, lines=True, dtype=False)
        else:
            raise LogValidationError(path, None, None, f"unknown table format {suffix!r} "
                                     "(expected .parquet, .csv or .jsonl)")
    except LogValidationError:
        raise
    except Exception as exc:  # a corrupt file is a bad log too
        raise LogValidationError(path, None, None, f"cannot be read as {suffix[1:]}: {exc}") from exc
    return _coerce(df, path, arrow_types)


def _environments(manifest: dict, rollouts: pd.DataFrame, notes: list[str]) -> list[Environment]:
    listed = manifest.get("environments") or manifest.get("envs")
    seen = list(dict.fromkeys(rollouts["env_id"].tolist()))
    if listed:
        envs = []
        for entry in listed:
            coords = entry.get("coordinates")
            envs.append(Environment(str(entry.get("env_id", entry.get("id"))), float(entry.get("w", 0.0)),
                                    None if coords is None else tuple(float(c) for c in coords)))
        known = {e.env_id for e in envs}
        extra = [e for e in seen if e not in known]
        if extra:
            notes.append(f"env ids in rollouts but not in the manifest (given w=0): {extra}")
            envs += [Environment(e, 0.0) for e in extra]
        return envs
    trained = sorted(set(rollouts.loc[rollouts["phase"] == "train", "env_id"]))
    n = len(trained)
    notes.append("no environment list in the manifest: w = 1/n for the "
                 f"{n} envs with train rows, 0 for the others; no coordinates")
    return [Environment(e, (1.0 / n) if e in trained else 0.0) for e in sorted(seen)]


def _read_run_dir(path: Path) -> list[Run]:
    manifest_path = path / "manifest.json"
    notes: list[str] = []
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise LogValidationError(manifest_path, None, None, f"not valid JSON: {exc}") from exc
    else:
        manifest = {}
        notes.append("no manifest.json")
    parts = sorted(p for p in (path / "rollouts").glob("part-*.parquet")
                   if not p.name.startswith(".") and not p.name.endswith(".tmp"))
    if not parts:
        raise LogValidationError(path, None, None, "no rollouts/part-*.parquet chunks")
    frames = [read_table(p) for p in parts]
    _check_no_batch_in_two_chunks(parts, frames)
    rollouts = pd.concat(frames, ignore_index=True)
    return [_make_run(manifest, rollouts, path, notes)]


def _check_no_batch_in_two_chunks(parts: list[Path], frames: list[pd.DataFrame]) -> None:
    """docs/rollouts.md: no (step, phase, group) batch is logged twice. A writer flushes whole
    batches, so one that appears in two chunks is a duplicated (e.g. copied) chunk, which
    would make the fit look more certain than it is."""
    seen: dict[tuple, Path] = {}
    for part, frame in zip(parts, frames):
        keys = frame[["step", "phase", "group_id"]].drop_duplicates()
        for row, key in zip(keys.index, keys.itertuples(index=False, name=None)):
            if key in seen:
                raise LogValidationError(part, int(row), "group_id",
                                         f"(step, phase, group) = {key} is already logged in {seen[key].name}: "
                                         "a batch logged twice (duplicated chunk?)")
            seen[key] = part


def _make_run(manifest: dict, rollouts: pd.DataFrame, source: Path, notes: list[str]) -> Run:
    run_ids = list(dict.fromkeys(rollouts["run_id"].tolist()))
    run_id = str(manifest.get("run_id") or (run_ids[0] if run_ids else source.name))
    status = manifest.get("status")
    finished = status == "finished"
    if not finished:
        notes.append(f"run not finished (status={status!r}): fitting the {len(rollouts)} rows present")
    envs = _environments(manifest, rollouts, notes)
    return Run(run_id, source, rollouts, manifest, envs, finished, notes)


def load_runs(paths) -> list[Run]:
    """Load and validate one or many runs (docs/rollouts.md).

    Parameters
    ----------
    paths : str, Path, or a list of them
        Run directories (``manifest.json`` + ``rollouts/part-*.parquet``) or
        table files (``.parquet``, ``.csv``, ``.jsonl``); a table holding
        several ``run_id`` values yields one run each.

    Returns
    -------
    list of Run
        In the order given; run ids are made unique (``#2`` suffix) if repeated.

    Raises
    ------
    LogValidationError
        On the first contract violation (file, row and column named).
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
        if path.is_dir():
            runs += _read_run_dir(path)
            continue
        rollouts = read_table(path)
        manifests = [path.with_name(path.stem + ".manifest.json"), path.with_name("manifest.json")]
        manifest = next((json.loads(m.read_text()) for m in manifests if m.exists()), {})
        for run_id, rows in rollouts.groupby("run_id", sort=False):
            notes = [] if manifest else [f"{path.name}: no manifest found next to the table"]
            own = manifest if manifest.get("run_id") in (None, run_id) else {}
            runs.append(_make_run({**own, "run_id": run_id}, rows.reset_index(drop=True), path, notes))
    seen: dict[str, int] = {}
    for run in runs:
        k = seen.get(run.run_id, 0)
        seen[run.run_id] = k + 1
        if k:
            run.run_id = f"{run.run_id}#{k + 1}"
    return runs


def write_run(run_dir: str | Path, rollouts: pd.DataFrame, manifest: dict) -> Path:
    """Write a run directory per docs/rollouts.md (manifest + one Parquet chunk, atomic renames).

    Used by :func:`fitting.synthesize`; ``rollouts`` must hold the contract's
    columns (extras are kept). Returns the run directory.
    """
    run_dir = Path(run_dir)
    (run_dir / "rollouts").mkdir(parents=True, exist_ok=True)
    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
    schema = pa.schema([(n, types[k]) for n, k in COLUMNS.items()])
    table = pa.Table.from_pandas(rollouts[list(COLUMNS)], schema=schema, preserve_index=False)
    final = run_dir / "rollouts" / "part-00000.parquet"
    tmp = final.with_name(".part-00000.parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(final)
    tmp_manifest = run_dir / ".manifest.json.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp_manifest.replace(run_dir / "manifest.json")
    return run_dir
