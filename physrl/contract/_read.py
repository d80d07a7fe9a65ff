"""Reading rollout tables: every faithful encoding of a contract column coerced to its canonical type, every
row validated, the bad cell named (file, row, column) in a :class:`LogValidationError`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._schema import _ARROW, COLUMNS, NULLABLE_TEXT, PHASES, LogValidationError, chunk_paths


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
            df = pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[""])
        else:
            df = pd.read_json(path, lines=True, dtype=False)
    except LogValidationError:
        raise
    except (OSError, ValueError, pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise LogValidationError(path, problem=f"cannot be read as {suffix[1:]}: {exc}") from None
    return _coerce(df, path, arrow_types, keep_extra)


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


def rows_on_disk(run_dir: str | Path) -> int:
    """Rows in the run's chunks, from the Parquet footers (no data read)."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in chunk_paths(run_dir))
