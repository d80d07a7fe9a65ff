"""Progress bars that keep moving during one long call (tqdm, to stderr).

A stage such as freezing the predictions runs a few long calls (tens of seconds each); a plain tqdm
bar redraws only when it is updated, so it sat at 0/1 with a frozen clock. :func:`stage` gives a bar
whose elapsed time is redrawn every second from a daemon thread, so a reader sees that work goes on
and for how long, and the bar advances as each unit of work ends (tqdm's ``refresh`` takes the bar's
own lock; https://tqdm.github.io/docs/tqdm/).
"""

from __future__ import annotations

import contextlib
import sys
import threading


@contextlib.contextmanager
def stage(desc: str, total: int | None = None, *, enabled: bool = True, unit: str = "step",
          interval: float = 1.0):
    """A tqdm bar for one stage of work, redrawn every ``interval`` seconds while the block runs.

    Parameters
    ----------
    desc : str
        What the stage does (the bar's label).
    total : int or None
        Units of work (None: a counter without a total).
    enabled : bool
        False: no bar and no thread (``bar.update`` still works, as a no-op).
    unit : str
        The unit's name.
    interval : float
        Seconds between redraws (> 0).

    Yields
    ------
    tqdm.tqdm
        Call ``update(k)`` as units finish; the bar is closed when the block ends.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True)
    stop = threading.Event()

    def redraw():
        while not stop.wait(interval):
            bar.refresh()

    ticker = threading.Thread(target=redraw, name=f"progress: {desc}", daemon=True)
    if enabled:
        ticker.start()
    try:
        yield bar
    finally:
        stop.set()
        if enabled:
            ticker.join()
        bar.close()
