"""Rollout logs per ```docs/rollouts.md```: chunked Parquet, atomic renames, a manifest.

Rows are buffered in memory and flushed as one chunk
``rollouts/part-<first step>-<last step>-<seq>.parquet`` at every checkpoint
step (and at the end), written to a temporary name and renamed into place, so a
half-written chunk is never read. On resume from the checkpoint at step k,
:meth:`RolloutWriter.truncate` drops rows the resumed run will sample again
(train rows with step >= k, eval rows with step > k), so no
(step, phase, group) is duplicated or skipped.
"""

from __future__ import annotations

import json
import os
import platform
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

#: the contract's columns and Arrow types (docs/rollouts.md), then our extra columns
SCHEMA = pa.schema([
    ("run_id", pa.string()), ("step", pa.int64()), ("phase", pa.string()), ("env_id", pa.string()),
    ("group_id", pa.int64()), ("prompt", pa.string()), ("completion", pa.string()), ("reward", pa.float64()),
    ("rs", pa.bool_()), ("rs_score", pa.float64()),
    # extras (readers that do not know them ignore them)
    ("expected", pa.string()), ("note_inserted", pa.bool_()), ("note_positions", pa.string()),
])
REQUIRED = {f.name: f.type for f in SCHEMA if f.name in
            ("run_id", "step", "phase", "env_id", "group_id", "prompt", "completion", "reward", "rs", "rs_score")}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


class RolloutWriter:
    """Buffers rollout rows and writes them as Parquet chunks under ``run_dir/rollouts``."""

    def __init__(self, run_dir: str | Path, run_id: str):
        self.dir = Path(run_dir) / "rollouts"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self._buffer: dict[str, list] = {f.name: [] for f in SCHEMA}
        self.n_written = 0
        self._seq = len(list(self.dir.glob("part-*.parquet")))

    def add(self, *, step: int, phase: str, env_id: list[str], group_id: list[int], prompt: list[str],
            completion: list[str], reward: list[float], rs: list[bool], rs_score: list[float],
            expected: list[str], note_inserted: list[bool], note_positions: list[str]) -> None:
        """Buffer one batch of rollouts (all lists of equal length) sampled at optimizer step ``step``."""
        n = len(completion)
        b = self._buffer
        b["run_id"] += [self.run_id] * n
        b["step"] += [int(step)] * n
        b["phase"] += [phase] * n
        for name, values in (("env_id", env_id), ("group_id", group_id), ("prompt", prompt),
                             ("completion", completion), ("reward", reward), ("rs", rs), ("rs_score", rs_score),
                             ("expected", expected), ("note_inserted", note_inserted),
                             ("note_positions", note_positions)):
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} values for {n} rollouts")
            b[name] += list(values)

    @property
    def pending(self) -> int:
        return len(self._buffer["step"])

    def flush(self) -> Path | None:
        """Write buffered rows as one chunk (temp name + atomic rename); returns its path or None if empty."""
        if not self.pending:
            return None
        table = pa.Table.from_pydict(self._buffer, schema=SCHEMA)
        steps = self._buffer["step"]
        path = self.dir / f"part-{min(steps):08d}-{max(steps):08d}-{self._seq:05d}.parquet"
        _write_table(path, table)
        self._seq += 1
        self.n_written += table.num_rows
        self._buffer = {f.name: [] for f in SCHEMA}
        return path

    def truncate(self, checkpoint_step: int) -> int:
        """Drop rows the run will sample again after resuming from ``checkpoint_step``; returns rows dropped.

        Kept: train rows with step < checkpoint_step, eval rows with step <= checkpoint_step.
        Leftover temporary files from a crash are removed.
        """
        self._buffer = {f.name: [] for f in SCHEMA}
        for tmp in self.dir.glob(".*.tmp"):
            tmp.unlink()
        dropped = 0
        for path in sorted(self.dir.glob("part-*.parquet")):
            table = pq.read_table(path)
            df = table.to_pandas()
            keep = ((df.phase == "train") & (df.step < checkpoint_step)) | ((df.phase == "eval") & (df.step <= checkpoint_step))
            if keep.all():
                continue
            dropped += int((~keep).sum())
            if not keep.any():
                path.unlink()
            else:
                _write_table(path, pa.Table.from_pandas(df[keep], schema=SCHEMA, preserve_index=False))
        return dropped


def read_rollouts(run_dir: str | Path) -> pd.DataFrame:
    """All rollout rows of a run as one DataFrame, validated against docs/rollouts.md.

    Raises ``ValueError`` naming file, row and column on a missing column, a
    wrong type, a reward outside [0, 1] or a negative step.
    """
    frames = []
    for path in sorted((Path(run_dir) / "rollouts").glob("part-*.parquet")):
        table = pq.read_table(path)
        for name, typ in REQUIRED.items():
            if name not in table.column_names:
                raise ValueError(f"{path}: missing column {name!r}")
            if table.schema.field(name).type != typ:
                raise ValueError(f"{path}: column {name!r} has type {table.schema.field(name).type}, expected {typ}")
        df = table.to_pandas()
        for name, bad in (("reward", ~df.reward.between(0.0, 1.0)), ("step", df.step < 0)):
            if bad.any():
                row = int(bad.to_numpy().nonzero()[0][0])
                raise ValueError(f"{path}: row {row}, column {name!r}: value {df[name].iloc[row]!r} out of range")
        frames.append(df)
    if not frames:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in SCHEMA.names})
    return pd.concat(frames, ignore_index=True)


def versions() -> dict[str, str]:
    """Versions of the packages that shape a run."""
    import numpy, tokenizers, torch, transformers, trl

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "tokenizers": tokenizers.__version__, "numpy": numpy.__version__,
            "pyarrow": pa.__version__, "pandas": pd.__version__}


def write_manifest(run_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically."""
    atomic_write_bytes(Path(run_dir) / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """Read ``manifest.json`` of a run."""
    return json.loads((Path(run_dir) / "manifest.json").read_text())


def update_manifest(run_dir: str | Path, **changes: Any) -> dict[str, Any]:
    """Merge ``changes`` into the manifest and write it back atomically."""
    manifest = read_manifest(run_dir)
    manifest.update(changes)
    write_manifest(run_dir, manifest)
    return manifest


now = _now
