"""Writing runs: atomic files (temporary name, fsync, rename), the manifest, rollouts in Parquet chunks.

A reader, or a crash at any moment, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ._schema import COLUMNS, ORGANISMS, PHASES, SCHEMA, Manifest, chunk_paths


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


class RolloutGapError(ValueError):
    """A run's rollout chunks cannot be resumed from: one is unreadable, or train steps before the checkpoint
    are missing (:meth:`ChunkWriter.truncate`)."""


def _ranges(steps: Sequence[int]) -> str:
    """``[50, 51, ..., 99, 120]`` -> ``"50-99, 120"``."""
    out, start, prev = [], None, None
    for s in steps:
        if start is None:
            start = prev = s
        elif s == prev + 1:
            prev = s
        else:
            out.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = prev = s
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
    return ", ".join(out)


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

        Raises
        ------
        RolloutGapError
            Before anything is changed: a chunk cannot be read (truncated or
            corrupted), or the kept train rows miss a step before the
            checkpoint (a chunk was deleted). Resuming would leave a hole in
            the run's log that a finished manifest would hide.
        """
        self._buffer = {name: [] for name in self.schema.names}
        frames, steps = [], set()
        for path in chunk_paths(self.dir.parent):
            try:
                df = pq.read_table(path).to_pandas()
            except (pa.ArrowInvalid, OSError) as exc:
                raise RolloutGapError(f"{path} cannot be read ({type(exc).__name__}: {exc}); the rows it held are "
                                      "lost, so this run cannot resume without a hole in its log: start it again in "
                                      "a new folder (the other runs are not affected)") from exc
            frames.append((path, df))
            steps.update(df.step[(df.phase == "train") & (df.step < checkpoint_step)].tolist())
        missing = sorted(set(range(max(checkpoint_step, 0))) - steps)
        if missing:
            raise RolloutGapError(f"{self.dir}: no train rows for steps {_ranges(missing)}, written before "
                                  f"checkpoint-{checkpoint_step} (a rollout chunk was deleted or lost); resuming would "
                                  "leave that hole in a run marked finished: start it again in a new folder")
        for tmp in self.dir.glob(".*.tmp"):
            tmp.unlink()
        dropped = 0
        for path, df in frames:
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
