"""Thread policy of the torch engine: scoped, restored afterwards, never much worse than the best choice.

torch's intra-op thread pool helps a large Euler step on a quiet machine
(2 threads were 1.55× faster than 1 here) and hurts it badly as soon as
another process shares the cores (1.9× slower with one busy core, once 8×
slower: idle OpenMP threads spin while they wait for the busy one). Small
problems never gain from threads. So, for ``threads="auto"``:

- below :data:`SMALL_WORK` numbers touched per step: one thread;
- above: a *measured choice*. The integrator times a few steps with one
  thread and a few with the thread count it found on entry, keeps the
  faster, and measures again every :data:`REMEASURE_SECONDS` seconds (load
  changes). A probe costs a few steps at the slower setting per period.

The setting is applied for the duration of one integration only
(``torch.set_num_threads`` is process-wide, so it is restored on exit);
importing ``physrl.sim`` changes nothing.
"""

from __future__ import annotations

import contextlib
import time

import torch

#: numbers touched per Euler step below which one thread is used (no measurement)
SMALL_WORK = 1 << 17
#: seconds between two measurements of the thread choice
REMEASURE_SECONDS = 10.0
#: timed steps per candidate thread count in one measurement (after one untimed step)
PROBE_STEPS = 3


_DEFAULT: list = ["auto"]


@contextlib.contextmanager
def thread_setting(setting="auto"):
    """Within this scope, integrations whose ``threads`` is ``"auto"`` use ``setting`` instead.

    For command lines (``--threads N``) and scripts; restores the previous
    default on exit. ``setting``: ``"auto"``, an int >= 1, or None (leave
    torch's setting alone).

    Raises
    ------
    ValueError
        For any other setting.
    """
    ThreadPolicy(setting)  # validates
    _DEFAULT.append(setting)
    try:
        yield
    finally:
        _DEFAULT.pop()


class ThreadPolicy:
    """Context manager choosing torch's CPU threads for one integration.

    Parameters
    ----------
    setting : "auto", int or None
        ``"auto"``: the policy of the module docstring (or the setting of an
        enclosing :func:`thread_setting`); an int: that many threads; None:
        leave torch's setting alone.
    work : int
        Numbers touched per Euler step (state size, times the coupling's
        cost factor): decides between "small" and "measured".
    device : str
        Only ``"cpu"`` integrations are managed.

    Attributes
    ----------
    choices : list of (threads, seconds per step)
        Every measurement taken (for benchmarks and tests).

    Raises
    ------
    ValueError
        For a setting that is not "auto", None or a positive int.
    """

    def __init__(self, setting="auto", work: int = 0, device: str = "cpu"):
        if not (setting is None or setting == "auto" or (isinstance(setting, int) and setting >= 1)):
            raise ValueError(f"threads must be 'auto', None or an int >= 1, got {setting!r}")
        if setting == "auto":
            setting = _DEFAULT[-1]
        self.setting = setting
        self.work = int(work)
        self.device = str(device)
        self.choices: list[tuple[int, float]] = []
        self._before: int | None = None
        self._measured = False

    # ---- scope -------------------------------------------------------------------------------
    def __enter__(self) -> "ThreadPolicy":
        if self.device != "cpu" or self.setting is None:
            return self
        self._before = torch.get_num_threads()
        if isinstance(self.setting, int):
            self._set(self.setting)
        elif self.work < SMALL_WORK or self._before <= 1:
            self._set(1)
        else:
            self._measured = True
            self._candidates = [1, self._before]
            self._start_probe()
        return self

    def __exit__(self, *exc) -> None:
        if self._before is not None and torch.get_num_threads() != self._before:
            torch.set_num_threads(self._before)

    @staticmethod
    def _set(n: int) -> None:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    # ---- measured choice ---------------------------------------------------------------------
    def _start_probe(self) -> None:
        self._probe = {c: [] for c in self._candidates}
        self._probe_order = list(self._candidates)
        self._untimed = True
        self._set(self._probe_order[0])

    def step(self, seconds: float) -> None:
        """Report the wall time of the Euler step just taken (drives the measured choice)."""
        if not self._measured:
            return
        if self._probe is None:
            if time.perf_counter() - self._since > REMEASURE_SECONDS:
                self._start_probe()
            return
        if self._untimed:          # the first step after a switch pays for waking the pool
            self._untimed = False
            return
        current = self._probe_order[0]
        self._probe[current].append(seconds)
        if len(self._probe[current]) < PROBE_STEPS:
            return
        self._probe_order.pop(0)
        if self._probe_order:
            self._untimed = True
            self._set(self._probe_order[0])
            return
        med = {c: sorted(v)[len(v) // 2] for c, v in self._probe.items()}
        best = min(med, key=med.get)
        self.choices.append((best, med[best]))
        self._set(best)
        self._probe = None
        self._since = time.perf_counter()

    @property
    def measuring(self) -> bool:
        """True when the integrator should time its steps and report them with :meth:`step`."""
        return self._measured
