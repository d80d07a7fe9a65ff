"""Where a sweep's runs execute: a local process pool (default), Slurm via
submitit, or a Ray cluster.

All three are driven through one tiny interface, :class:`Executor`:
``submit(fn, *args) -> handle`` and ``result(handle)``. The experiment never
knows which engine ran a run; every run writes its own directory, so the
engines only need to carry a function call to a worker and back.

References: ``concurrent.futures.ProcessPoolExecutor`` (Python docs);
submitit's ``AutoExecutor`` (https://github.com/facebookincubator/submitit);
Ray's ``ray.remote`` / ``ray.get`` (https://docs.ray.io).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ENGINES = ("local", "submitit", "ray")
#: members per population when ``organism.trainer = "population"`` and ``executor.population_size`` is unset
DEFAULT_POPULATION_SIZE = 8


@dataclass
class ExecutorConfig:
    """How to run a sweep's jobs.

    Attributes
    ----------
    engine : {"local", "submitit", "ray"}
        ``local``: a process pool on this machine (default). ``submitit``:
        Slurm when ``srun`` is on PATH, else submitit's local runner.
        ``ray``: ``ray.init(address=ray_address)``.
    max_workers : int
        Parallel jobs for the local pool (>= 1). Default: ``os.cpu_count()``
        jobs each with one torch thread.
    timeout_min : int
        Slurm time limit per job, minutes (submitit).
    slurm_partition : str or None
        Slurm partition (submitit).
    gpus_per_job : int
        GPUs requested per job (submitit / ray). 0 on CPU machines.
    cpus_per_job : int
        CPUs per job (submitit / ray).
    ray_address : str or None
        Address of an existing Ray cluster; None starts a local one.
    extra : dict
        Further ``update_parameters`` keywords for submitit (e.g. ``mem_gb``,
        ``slurm_account``).
    population_size : int or None
        With ``organism.trainer = "population"``: at most this many runs that
        can share a population (same architecture, step budget and GRPO
        settings: ``organisms.population_key``) are trained as one population,
        one job (:func:`physrl.experiment.runs.train_planned`). None: 8
        (:data:`DEFAULT_POPULATION_SIZE`). Setting it with the ``trl`` trainer
        is an error (each TRL run is its own job).
    """

    engine: str = "local"
    max_workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    timeout_min: int = 60
    slurm_partition: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int = 1
    ray_address: str | None = None
    extra: dict = field(default_factory=dict)
    population_size: int | None = None

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"executor.engine must be one of {ENGINES}, got {self.engine!r}")
        if self.max_workers < 1:
            raise ValueError(f"executor.max_workers must be >= 1, got {self.max_workers}")
        if self.gpus_per_job < 0 or self.cpus_per_job < 1:
            raise ValueError("executor.gpus_per_job must be >= 0 and cpus_per_job >= 1")
        if self.population_size is not None and (not isinstance(self.population_size, int)
                                                 or isinstance(self.population_size, bool)
                                                 or self.population_size < 1):
            raise ValueError(f"executor.population_size must be an integer >= 1 (members per population), "
                             f"got {self.population_size!r}")

    def members_per_population(self) -> int:
        """``population_size``, or :data:`DEFAULT_POPULATION_SIZE` when unset."""
        return self.population_size if self.population_size is not None else DEFAULT_POPULATION_SIZE


def check_population_size(organism: dict, executor: ExecutorConfig) -> None:
    """Refuse ``executor.population_size`` without ``organism.trainer = "population"`` (the TRL trainer trains
    one run per job: the setting would silently do nothing).

    Raises
    ------
    ValueError
        Naming both settings.
    """
    trainer = organism.get("trainer", "trl") if isinstance(organism, dict) else "trl"
    if executor.population_size is not None and trainer != "population":
        raise ValueError(f"executor.population_size = {executor.population_size} groups runs into populations, "
                         f"which needs organism.trainer = \"population\" (it is {trainer!r}); set it, or drop "
                         "population_size")


def _die_with_parent(parent_pid: int) -> None:
    """Initializer of a local pool worker: the worker is SIGKILLed when the experiment's process dies.

    A pool worker outlives a parent killed with SIGKILL (nothing tells it), goes on training its run
    and then idles forever; an immediate rerun of the experiment would train the same run beside it
    (measured: the orphan of a killed ``physrl experiment`` was still alive a minute later). Linux's
    ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` ties the worker to the thread that spawned it (the one that
    submits, which waits for every result); a killed worker's run resumes from its last checkpoint
    like any killed run. Elsewhere nothing is set: organisms' run lock still keeps a second trainer
    out of the run.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
            return
        if os.getppid() != parent_pid:  # the parent died before the line above ran
            os._exit(1)


def _single_threaded(fn: Callable, args: tuple) -> Any:
    """Run ``fn(*args)`` with one torch thread (so parallel jobs do not oversubscribe)."""
    import torch

    torch.set_num_threads(1)
    return fn(*args)


class Executor:
    """One interface over the three engines: ``submit`` then ``result``.

    Example
    -------
    >>> with Executor(ExecutorConfig(engine="local", max_workers=2), Path("runs/x")) as ex:
    ...     handles = [ex.submit(pow, 2, k) for k in range(3)]
    ...     [ex.result(h) for h in handles]
    [1, 2, 4]
    """

    def __init__(self, config: ExecutorConfig, log_dir: Path):
        self.config = config
        self.log_dir = Path(log_dir)
        self._pool = None
        self._submitit = None
        self._ray = None
        if config.engine == "local":
            if config.max_workers > 1:
                ctx = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(config.max_workers, mp_context=ctx, initializer=_die_with_parent,
                                                 initargs=(os.getpid(),))
        elif config.engine == "submitit":
            try:
                import submitit
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise RuntimeError("executor.engine='submitit' needs `pip install submitit` "
                                   "(or `pip install physrl[slurm]`)") from err
            ex = submitit.AutoExecutor(folder=str(self.log_dir / "submitit" / "%j"))
            params = dict(timeout_min=config.timeout_min, cpus_per_task=config.cpus_per_job,
                          gpus_per_node=config.gpus_per_job, name="physrl")
            if config.slurm_partition:
                params["slurm_partition"] = config.slurm_partition
            params.update(config.extra)
            ex.update_parameters(**params)
            self._submitit = ex
        else:
            try:
                import ray
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise RuntimeError("executor.engine='ray' needs `pip install ray` "
                                   "(or `pip install physrl[ray]`)") from err
            if not ray.is_initialized():
                ray.init(address=config.ray_address, ignore_reinit_error=True)
            from physrl.experiment.ray_resources import check_ray_resources  # a job no node can run would hang (ray #45909)
            check_ray_resources(vars(config), ray.cluster_resources(), config.ray_address)
            self._ray = ray

    def submit(self, fn: Callable, *args) -> Any:
        """Start ``fn(*args)``; returns a handle for :meth:`result`.

        Local pool and Ray workers run it with one torch thread (as one
        organism run is planned: the same rollouts whichever engine runs it).
        """
        if self._pool is not None:
            return self._pool.submit(_single_threaded, fn, args)
        if self._submitit is not None:
            return self._submitit.submit(fn, *args)
        if self._ray is not None:
            remote = self._ray.remote(num_cpus=self.config.cpus_per_job,
                                      num_gpus=self.config.gpus_per_job)(_single_threaded)
            return remote.remote(fn, args)
        return ("inline", fn, args)  # one worker: run in this process, lazily

    def result(self, handle: Any) -> Any:
        """Wait for a job and return its value; re-raises the job's exception."""
        if isinstance(handle, tuple) and handle and handle[0] == "inline":
            return handle[1](*handle[2])
        if self._ray is not None:
            return self._ray.get(handle)
        return handle.result()

    def as_completed(self, handles: list) -> Any:
        """Yield ``(index, handle)`` as jobs finish (inline jobs run here, in order), for progress bars."""
        if self._pool is not None:
            from concurrent.futures import as_completed

            where = {h: i for i, h in enumerate(handles)}
            for h in as_completed(where):
                yield where[h], h
            return
        if self._ray is not None:
            pending = {h: i for i, h in enumerate(handles)}
            while pending:
                ready, _ = self._ray.wait(list(pending), num_returns=1)
                for h in ready:
                    yield pending.pop(h), h
            return
        if self._submitit is not None:
            import time

            pending = dict(enumerate(handles))
            while pending:
                done = [i for i, h in pending.items() if h.done()]
                for i in done:
                    yield i, pending.pop(i)
                if not done:
                    time.sleep(1.0)
            return
        yield from enumerate(handles)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
