"""Thread policy of the torch engine: scoped, restored afterwards, never much worse than the best choice.

torch's intra-op thread pool helps a large Euler step on a quiet machine
(2 threads were 1.55× faster than 1 here) and hurts it badly as soon as
another process shares the cores (1.9× slower with one busy core, once 8×
slower: idle OpenMP threads spin while they wait for the busy one). Small
problems never gain from threads. So, for ``threads="auto"``:

- below :data:`SMALL_WORK` numbers touched per step: one thread;
- above: a *measured choice*. The integrator first times a few steps with one
  thread and a few with the thread count it found on entry and keeps the
  faster. Then, every :data:`PROBE_EVERY` seconds of integration, it tries
  the other count for one step; only if that step beats the current choice's
  recent median by 10% does it time two more and possibly switch. While the
  choice holds, the interval between probes doubles up to
  :data:`PROBE_EVERY_MAX`. A probe costs one step at the slower setting, so a
  loaded machine pays about a per cent, and the decision is remembered for
  later integrations of a similar size in the same process (sweeps integrate
  many chunks; the schedule counts their integration time, not the wall clock).

The setting is applied for the duration of one integration only
(``torch.set_num_threads`` is process-wide, so it is restored on exit);
importing ``physrl.sim`` changes nothing.
"""

from __future__ import annotations

import contextlib

import torch

#: numbers touched per Euler step below which one thread is used (no measurement)
SMALL_WORK = 1 << 17
#: first interval (s of integration) between two probes of the other thread count; doubles while the choice holds
PROBE_EVERY = 10.0
#: longest interval (s of integration) between two probes
PROBE_EVERY_MAX = 160.0
#: timed steps per candidate in a full measurement (after one untimed step)
PROBE_STEPS = 3

#: this process's decisions: (work bucket, threads on entry) -> (choice, next probe, interval, integration clock)
_MEMORY: dict = {}


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
            self._start_measured()
        return self

    def __exit__(self, *exc) -> None:
        if self._measured and self._choice is not None:
            _MEMORY[self._key] = (self._choice, self._next_probe, self._period, self._clock)
        if self._before is not None and torch.get_num_threads() != self._before:
            torch.set_num_threads(self._before)

    @staticmethod
    def _set(n: int) -> None:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    # ---- measured choice ---------------------------------------------------------------------
    def _start_measured(self) -> None:
        self._key = (self.work.bit_length(), self._before)
        self._recent: list[float] = []
        remembered = _MEMORY.get(self._key)
        if remembered is None:              # full measurement of both candidates
            self._plan = [(c, PROBE_STEPS) for c in self._candidates]
            self._times = {c: [] for c in self._candidates}
            self._choice = None
            self._period = PROBE_EVERY
            self._clock = 0.0
            self._begin_candidate()
        else:
            self._choice, self._next_probe, self._period, self._clock = remembered
            self._plan = None
            self._set(self._choice)

    def _begin_candidate(self) -> None:
        threads = self._plan[0][0]
        self._untimed = self._choice is None   # a full measurement drops each candidate's first step
        self._set(threads)

    def _decide(self, choice: int, seconds: float, *, switched: bool) -> None:
        self._period = PROBE_EVERY if switched else min(2 * self._period, PROBE_EVERY_MAX)
        self._choice = choice
        self._next_probe = self._clock + self._period
        self._plan = None
        self._recent = []
        self.choices.append((choice, seconds))
        _MEMORY[self._key] = (choice, self._next_probe, self._period, self._clock)
        self._set(choice)

    def step(self, seconds: float) -> None:
        """Report the wall time of the Euler step just taken (drives the measured choice)."""
        if not self._measured:
            return
        self._clock += seconds
        if self._plan is None:                                   # exploiting the current choice
            self._recent = (self._recent + [seconds])[-PROBE_STEPS:]
            if self._clock >= self._next_probe and self._recent:
                other = [c for c in self._candidates if c != self._choice][0]
                self._plan = [(other, 1)]                        # one step first; more only if promising
                self._times = {other: []}
                self._begin_candidate()
            return
        if self._untimed:
            self._untimed = False
            return
        threads, wanted = self._plan[0]
        self._times[threads].append(seconds)
        if len(self._times[threads]) < wanted:
            return
        if self._choice is None:                                 # full measurement
            self._plan.pop(0)
            if self._plan:
                self._begin_candidate()
                return
            med = {c: _median(v) for c, v in self._times.items()}
            best = min(med, key=med.get)
            self._decide(best, med[best], switched=True)
            return
        reference = _median(self._recent)
        probe = _median(self._times[threads])
        if wanted == 1 and seconds < 0.9 * reference:            # promising: confirm with two more
            self._plan = [(threads, PROBE_STEPS)]
            return
        if wanted > 1 and probe < reference:
            self._decide(threads, probe, switched=True)
        else:
            self._decide(self._choice, reference, switched=False)

    @property
    def measuring(self) -> bool:
        """True when the integrator should time its steps and report them with :meth:`step`."""
        return self._measured


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
