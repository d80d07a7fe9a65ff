"""The rollout-log contract (docs/rollouts.md): one schema, one typed manifest, one writer, one reader.

Organisms write runs with it, fitting reads them with it, and any other RL
framework whose logs are converted to it can be fitted too. This is the ground
floor of the house: a leaf package that imports nothing else of physrl, split
by what it does and re-exported here (``physrl.contract`` is the public path).

A run is a directory::

    RUN/
      manifest.json              a :class:`Manifest` (written at start, updated at the end)
      rollouts/part-*.parquet    every rollout, appended in chunks (:class:`ChunkWriter`)

or one table file (``.parquet``, ``.csv``, ``.jsonl``) with the same columns,
its manifest optional (``<stem>.manifest.json`` or ``manifest.json`` beside it).

Contents
--------
- ``_schema``, the schema and the manifest: :data:`COLUMNS` (name -> logical type), :data:`SCHEMA`
  (canonical Arrow), :class:`Manifest`, :class:`Environment`, :func:`read_manifest`,
  :func:`chunk_paths` (the run directory's layout), :class:`LogValidationError`;
- ``_write``, writing with atomic files: :func:`atomic_write_bytes`, :func:`write_manifest`,
  :func:`update_manifest`, :class:`ChunkWriter`, :func:`write_run`;
- ``_read``, reading with coercion and validation: :func:`read_table`, :func:`read_rollouts`,
  :func:`rows_on_disk`;
- ``_run``, the run as fitting reads it: :func:`load_runs`, :class:`Run` (with its measured prior,
  :meth:`Run.measured_prior`, :class:`MeasuredPrior`, :class:`PriorEstimate`) and
  :func:`jeffreys_interval` for binomial proportions.

Room: contract; may import: nothing of the project but its own room.
"""

from __future__ import annotations

from ._schema import (COLUMNS as COLUMNS, CONTRACT_VERSION as CONTRACT_VERSION, NULLABLE_TEXT as NULLABLE_TEXT,
                      OBSERVATION_KEYS as OBSERVATION_KEYS, ORGANISMS as ORGANISMS, PHASES as PHASES,
                      SCHEMA as SCHEMA, STATUSES as STATUSES, Environment as Environment,
                      LogValidationError as LogValidationError, Manifest as Manifest, chunk_paths as chunk_paths,
                      now as now, read_manifest as read_manifest)
from ._write import (ChunkWriter as ChunkWriter, RolloutGapError as RolloutGapError,
                     atomic_write_bytes as atomic_write_bytes,
                     update_manifest as update_manifest, write_manifest as write_manifest, write_run as write_run)
from ._read import read_rollouts as read_rollouts, read_table as read_table, rows_on_disk as rows_on_disk
from ._run import (MeasuredPrior as MeasuredPrior, PriorEstimate as PriorEstimate, Run as Run,
                   jeffreys_interval as jeffreys_interval, load_runs as load_runs)

__all__ = ["COLUMNS", "CONTRACT_VERSION", "NULLABLE_TEXT", "OBSERVATION_KEYS", "ORGANISMS", "PHASES", "SCHEMA",
           "STATUSES", "Environment", "LogValidationError", "Manifest", "chunk_paths", "now", "read_manifest",
           "ChunkWriter", "RolloutGapError", "atomic_write_bytes", "update_manifest", "write_manifest", "write_run",
           "read_rollouts", "read_table", "rows_on_disk",
           "MeasuredPrior", "PriorEstimate", "Run", "jeffreys_interval", "load_runs"]
