"""One trainer per run directory: an exclusive ``fcntl.flock`` on ``RUN/.train.lock``.

Two processes training the same run directory (a second ``--resume`` while
the first still runs, or an experiment rerun while a worker of the killed
one still trains) interleave their checkpoint rotation, truncation and chunk
writes: measured on a 40-step tiny organism, two concurrent resumes left two
chunks holding the same (step, phase, group) batches (a run no reader or
resume accepts any more) in one try of four, and a checkpoint folder deleted
under the other trainer in another. The lock makes the second trainer stop
at once with :class:`RunInUse`, before it touches anything.

The kernel drops an flock when its holder dies, even by SIGKILL, so a killed
run never leaves a stale lock: the file may remain (it is removed on a normal
exit), the lock does not. Without ``fcntl`` (not POSIX) or on a file system
that refuses locks, nothing is locked (best effort, as the stage-1 cache).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

#: the lock file's name inside a run directory (hidden: readers look only at manifest.json and rollouts/)
LOCK_NAME = ".train.lock"


class RunInUse(RuntimeError):
    """Another live process holds the run directory's lock (it is training that run now)."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown"
    return text or "unknown"


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the exclusive training lock of the existing folder ``run_dir``.

    The holder's pid is written into the lock file, so the error names it.
    The file is removed on exit while the lock is still held, and a lock
    taken on a file that another holder removed meanwhile is taken again on
    the new one (so two processes never both believe they hold it).

    Raises
    ------
    RunInUse
        Another process holds the lock (naming the folder and its pid).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(run_dir) / LOCK_NAME
    while True:
        fh = open(path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise RunInUse(f"{run_dir} is being trained by another process (pid {_holder(path)}); let it finish "
                           "or stop it, then resume") from None
        except OSError:  # pragma: no cover - a file system without locks: best effort, unlocked
            fh.close()
            yield
            return
        try:
            same = os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()  # the file was removed by its previous holder between our open and our lock: again
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        fh.close()  # releases the lock
