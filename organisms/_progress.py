"""In-run progress of an organism run: a tqdm bar per stage and ``RUN_DIR/progress.json``.

A run spends its first stretch in stage 1 (supervised pretraining: ~10 s on an
idle core, over a minute on a busy machine) and the rest in GRPO steps. Both
show a tqdm bar on stderr when ``config.progress`` is on, and both keep
``progress.json`` current (written atomically, at most once a second and at a
stage's last step), so that a supervisor that cannot see the worker's stderr
(the experiment's process pool, Ray, Slurm) can show each running organism's
step with :func:`progress_words`::

    {"stage": "stage 1", "step": 230, "total": 600, "updated": "2026-12-07T21:00:00+00:00"}

Stage 1 counts steps through :class:`physrl.organisms._pretrain._Stage1Step`
(the built-in families' pretraining); a family with its own ``pretrain`` that
does not use it shows no stage-1 bar.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

from physrl.contract import now

PROGRESS_FILE = "progress.json"

#: the hook _Stage1Step calls after each optimizer step (set by :func:`stage1_progress`)
STAGE1_STEP: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("stage1_step", default=None)


class RunProgress:
    """One stage's progress: a tqdm bar (``show``) and ``run_dir/progress.json``.

    Parameters
    ----------
    run_dir : path
        The run directory (``progress.json`` goes there).
    stage : str
        ``"stage 1"`` or ``"GRPO"``: the bar's label and the file's ``stage``.
    total : int
        Steps of the stage (optimizer steps).
    show : bool
        Draw the bar on stderr.
    initial : int
        Steps already done (a resumed run).
    leave : bool
        Keep the finished bar on screen.
    """

    def __init__(self, run_dir, stage: str, total: int, show: bool, initial: int = 0, leave: bool = True,
                 min_interval: float = 1.0):
        self.path = Path(run_dir) / PROGRESS_FILE
        self.stage, self.total, self.step = stage, int(total), int(initial)
        self.min_interval, self._written = min_interval, 0.0
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.step, desc=stage, unit="step", leave=leave)
        self._write()

    def update(self, step: int, **postfix) -> None:
        """Record that ``step`` steps of the stage are done (bar to ``step``; the file at most once a second)."""
        self.step = int(step)
        if self.bar is not None:
            self.bar.update(self.step - self.bar.n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            if self.step >= self.total:
                self.bar.refresh()  # the stage's end is drawn whatever tqdm's redraw interval skipped
        if self.step >= self.total or time.monotonic() - self._written >= self.min_interval:
            self._write()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _write(self) -> None:
        tmp = self.path.with_name(f".{PROGRESS_FILE}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_text(json.dumps({"stage": self.stage, "step": self.step, "total": self.total,
                                       "updated": now()}))
            os.replace(tmp, self.path)
        except OSError:  # progress is a courtesy: a full disk must not stop the run
            tmp.unlink(missing_ok=True)
        self._written = time.monotonic()


@contextlib.contextmanager
def stage1_progress(run_dir, total: int, show: bool) -> Iterator[RunProgress]:
    """While stage 1 runs: every ``_Stage1Step`` call advances a ``stage 1`` bar and ``progress.json``."""
    progress = RunProgress(run_dir, "stage 1", total, show, leave=False)
    token = STAGE1_STEP.set(lambda: progress.update(progress.step + 1))
    try:
        yield progress
    finally:
        STAGE1_STEP.reset(token)
        progress.close()


def read_progress(run_dir) -> dict | None:
    """``run_dir/progress.json`` as a dict (``stage``, ``step``, ``total``, ``updated``), or None if absent or
    being replaced."""
    try:
        return json.loads((Path(run_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


def progress_words(run_dir) -> str | None:
    """``"stage 1 230/600"`` or ``"GRPO 120/400"``: a running organism's step, for a supervisor's bar; None
    before the run wrote any."""
    p = read_progress(run_dir)
    return None if p is None else f"{p['stage']} {p['step']}/{p['total']}"
