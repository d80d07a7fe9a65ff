"""Crash-safe GRPO checkpoints: written aside, renamed into place, checked before a resume.

transformers' ``Trainer._save_checkpoint`` writes ``<output_dir>/checkpoint-<step>/``
file by file (model, optimizer, scheduler, RNG state, ``trainer_state.json``),
so a kill while it runs leaves a folder that looks like a checkpoint and makes
``trainer.train(resume_from_checkpoint=...)`` fail. Here the trainer's
``output_dir`` is a staging folder ``RUN/checkpoints/.incoming``; when the save
is complete the Trainer calls the callbacks' ``on_save`` (transformers docs,
``TrainerCallback.on_save``: "called after a checkpoint save"), and
:func:`publish` fsyncs its files and renames it to
``RUN/checkpoints/checkpoint-<step>`` in one atomic ``os.replace``. A
checkpoint under its final name is therefore always complete. On resume
:func:`resume_point` still checks every candidate (runs written before this
scheme, a disk that truncated a file) and falls back to the newest complete
one, moving the others aside (never deleting them) and saying why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import uuid
import zipfile
from pathlib import Path
from typing import Callable

#: staging folder of the checkpoint being written (the trainer's ``output_dir``)
INCOMING = ".incoming"
#: checkpoints kept (the newest ones); older ones are removed after a new one is published
KEEP = 2
#: files a checkpoint needs to resume GRPO (transformers Trainer, single process, save_only_model=False)
REQUIRED = ("config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
            "trainer_state.json")
_NAME = re.compile(r"^checkpoint-(\d+)$")


def step_of(path: Path) -> int | None:
    """The step of ``checkpoint-<step>`` (None for another name)."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def _safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file is not whole: header (u64 length + JSON) and every tensor's bytes present."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{path.name} is truncated ({size} bytes)"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"{path.name} is truncated (header of {n} bytes, file of {size})"
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"{path.name} has a corrupt header"
    ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    need = 8 + n + max(ends, default=0)
    if size < need:
        return f"{path.name} is truncated ({size} of {need} bytes)"
    return None


def problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint, or None when it is.

    Checks that every file of :data:`REQUIRED` is there, that
    ``trainer_state.json`` parses and names the folder's step, that the
    safetensors weights hold every tensor's bytes, and that the torch files
    (zip archives) end with their central directory (a truncated one does not).
    """
    path = Path(path)
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is not valid JSON"
    if state.get("global_step") != step_of(path):
        return f"trainer_state.json says step {state.get('global_step')!r}"
    bad = _safetensors_problem(path / "model.safetensors")
    if bad:
        return bad
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        if not zipfile.is_zipfile(path / name):
            return f"{name} is truncated"
    return None


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - filesystems that refuse directory fsync
        pass
    finally:
        os.close(fd)


def _move_aside(path: Path, why: str) -> Path:
    aside = path.with_name(f".{why}-{path.name}-{uuid.uuid4().hex[:6]}")
    os.replace(path, aside)
    return aside


def publish(staged: Path, root: Path, keep: int = KEEP) -> Path:
    """Rename a complete staged checkpoint into ``root`` and drop all but the ``keep`` newest.

    Parameters
    ----------
    staged : Path
        ``root/.incoming/checkpoint-<step>``, fully written.
    root : Path
        ``RUN/checkpoints``.

    Returns
    -------
    Path
        ``root/checkpoint-<step>``.
    """
    _fsync_tree(staged)
    final = root / staged.name
    if final.exists():  # e.g. left by a run that stopped before this scheme
        _move_aside(final, "replaced")
    os.replace(staged, final)
    _fsync_dir(root)
    done = sorted((p for p in root.glob("checkpoint-*") if step_of(p) is not None), key=step_of)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(_move_aside(old, "deleting"), ignore_errors=True)
    return final


def resume_point(root: Path, log: Callable[[str], None] = print) -> Path | None:
    """The newest complete checkpoint under ``root`` (``RUN/checkpoints``), None when there is none.

    The staging folder of a checkpoint that was being written is removed.
    Incomplete checkpoints newer than the one returned are moved aside to
    ``root/.incomplete-checkpoint-<step>-<id>`` (not deleted), each with one
    ``log`` line naming it and why it was skipped.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    shutil.rmtree(root / INCOMING, ignore_errors=True)
    for stale in root.glob(".deleting-*"):
        shutil.rmtree(stale, ignore_errors=True)
    candidates = sorted((p for p in root.glob("checkpoint-*") if p.is_dir() and step_of(p) is not None),
                        key=step_of, reverse=True)
    for path in candidates:
        why = problem(path)
        if why is None:
            return path
        aside = _move_aside(path, "incomplete")
        log(f"skipped {path.name}: incomplete ({why}; a run killed while writing it?); moved to {aside.name}")
    return None
