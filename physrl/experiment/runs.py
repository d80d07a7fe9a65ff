"""The experiment's run plan and its execution: which organisms to train, and
training them through an executor with skip / resume.

A run is identified by its role, N, p0, held-out count and seed; its directory
is ``DIR/runs/<run_id>``. A rerun of the experiment skips runs whose manifest
says ``finished`` and resumes the others from their last checkpoint.

With ``organism.trainer = "population"`` runs that can share a population
(``organisms.population_key``: architecture, step budget, GRPO settings,
vocabulary) are grouped, in plan order, into populations of at most
``executor.population_size`` members, each population one executor job
(:func:`train_population_job`). Each member still writes its own
``DIR/runs/<run_id>``; which runs form a population is recorded in
``DIR/logs/populations/<population id>.json`` before the job starts, so a
rerun resumes an unfinished population as a whole. A member left unfinished
beside finished members (it failed alone) starts afresh in a new population.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
import uuid
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from physrl.contract import read_manifest
from .config import ExperimentConfig
from .executors import Executor, check_population_size

CALIBRATION, SWEEP = "calibration", "sweep"


@dataclass(frozen=True)
class PlannedRun:
    """One organism run of the experiment.

    Attributes
    ----------
    role : {"calibration", "sweep"}
        Calibration runs are fitted on; sweep runs are only predicted.
    n_envs : int
        Training environments N.
    p0 : float
        Prior RS propensity in (0, 1).
    n_heldout : int
        Held-out environments (w = 0).
    seed : int
        Organism seed.
    family_seed : int or None
        The environment family's seed (digit maps); None keeps the organism
        config's.
    """

    role: str
    n_envs: int
    p0: float
    n_heldout: int
    seed: int
    family_seed: int | None = None

    @property
    def run_id(self) -> str:
        tag = "cal" if self.role == CALIBRATION else "sweep"
        return f"{tag}-N{self.n_envs}-p{self.p0:g}-h{self.n_heldout}-s{self.seed}"

    def organism_overrides(self) -> dict:
        out = {"n_envs": self.n_envs, "p0": self.p0, "n_heldout": self.n_heldout, "seed": self.seed}
        if self.family_seed is not None:
            out["family_seed"] = self.family_seed
        return out


def _family_seed(config: ExperimentConfig, seed: int) -> int | None:
    if not config.vary_family_seed:
        return None
    from physrl.organisms import OrganismConfig

    return int(config.organism.get("family_seed", OrganismConfig.family_seed)) + seed


def plan_runs(config: ExperimentConfig, role: str | None = None) -> list[PlannedRun]:
    """Every run the experiment needs: calibration runs, then the (N, p0, seed) sweep.

    Calibration runs use ``config.calibration_seed_list()``; sweep runs every
    seed of ``config.seeds`` at every (p0, N) of ``config.sweep_grid()``, with
    K − N held-out environments in the fixed-family design. ``role`` keeps
    only one role.
    """
    runs = [PlannedRun(CALIBRATION, c.n_envs, c.p0, c.n_held_out, s, _family_seed(config, s))
            for s in config.calibration_seed_list() for c in config.calibration]
    for s in config.seeds:
        for p0, ns in config.sweep_grid().items():
            k = config.family_size(p0)
            runs += [PlannedRun(SWEEP, n, p0, 0 if k is None else k - n, s, _family_seed(config, s))
                     for n in ns]
    return [r for r in runs if role is None or r.role == role]


def run_status(run_dir: Path) -> str:
    """``absent`` (nothing there), ``finished``, or ``unfinished`` (running / failed / no manifest)."""
    manifest = Path(run_dir) / "manifest.json"
    if not manifest.exists():
        return "absent" if not Path(run_dir).exists() or not any(Path(run_dir).iterdir()) else "unfinished"
    try:
        status = json.loads(manifest.read_text()).get("status")
    except json.JSONDecodeError:
        return "unfinished"
    return "finished" if status == "finished" else "unfinished"


# ---- each running organism's step, for the parent's progress display -------------------------------------------
def progress_file(run_dir: str | Path) -> Path:
    """Where a run being trained reports its step: ``OUT/logs/progress/<run folder>.json`` beside ``OUT/runs/``.

    A file on the experiment's folder works alike for the local pool, Slurm (submitit) and Ray workers, which
    share no memory with the parent but write the run folder on the same filesystem; it stays out of the run
    folder, which holds only the log contract's files.
    """
    run_dir = Path(run_dir)
    return run_dir.parent.parent / "logs" / "progress" / f"{run_dir.name}.json"


def write_progress(run_dir: str | Path, step: int, max_steps: int, phase: str) -> None:
    """Record that the run in ``run_dir`` is at optimizer ``step`` of ``max_steps`` in ``phase`` ("stage 1",
    "GRPO", "finished"); atomic (a reader never sees half a file); never raises (progress is a courtesy)."""
    path = progress_file(run_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"step": int(step), "max_steps": int(max_steps), "phase": phase,
                                   "time": time.time()}))
        tmp.replace(path)
    except OSError:
        pass


def read_progress(run_dir: str | Path) -> dict | None:
    """The last :func:`write_progress` record of ``run_dir`` ({step, max_steps, phase, time}), or None."""
    try:
        return json.loads(progress_file(run_dir).read_text())
    except (OSError, ValueError):
        return None


def _progress_callback(run_dir: str | Path, max_steps: int):
    """A ``transformers.TrainerCallback`` that writes the run's step at the start of training and after every
    optimizer step (:func:`write_progress`)."""
    from transformers import TrainerCallback

    class ReportStep(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            write_progress(run_dir, state.global_step, max_steps, "GRPO")

        def on_step_end(self, args, state, control, **kw):
            write_progress(run_dir, state.global_step, max_steps, "GRPO")

    return ReportStep()


class StepMonitor:
    """A second bar under the runs' bar: the GRPO steps of the runs being trained, with each running run's
    step in its postfix (``sweep-N8-p0.1-h0-s0 120/400``; a population, ``groups``, once as members x steps:
    ``population of 7 (sweep-N2-p0.05-h16-s0, ...) GRPO 7x120/400``), read every ``interval`` seconds from the
    files of :func:`write_progress` by a daemon thread."""

    def __init__(self, run_dirs: dict[str, Path], max_steps: dict[str, int], *, enabled: bool = True,
                 interval: float = 1.0, desc: str = "GRPO steps", groups: dict[str, list[str]] | None = None):
        from tqdm.auto import tqdm

        self.run_dirs, self.max_steps, self.interval = run_dirs, max_steps, interval
        #: run id -> (population id, its members): a running population is shown once, as members x steps
        self.group_of = {r: (g, members) for g, members in (groups or {}).items() for r in members}
        self.finished: set[str] = set()
        self.bar = tqdm(total=sum(max_steps.values()), desc=desc, unit="step", disable=not enabled, position=1,
                        leave=False, dynamic_ncols=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="physrl organism steps", daemon=True)
        if enabled:
            self._thread.start()

    def done(self, run_id: str) -> None:
        """Count a run as trained to its end (whatever its file said last)."""
        self.finished.add(run_id)
        self.update()

    def update(self) -> None:
        steps, running, shown_groups = 0, [], set()
        for k, d in self.run_dirs.items():
            if k in self.finished:
                steps += self.max_steps[k]
                continue
            rec = read_progress(d)
            if rec is None:
                continue
            step = min(int(rec.get("step", 0)), self.max_steps[k])
            steps += step
            if k in self.group_of:
                group, members = self.group_of[k]
                if group not in shown_groups:
                    shown_groups.add(group)
                    running.append(f"population of {len(members)} ({members[0]}, ...) {rec.get('phase', '')} "
                                   f"{len(members)}x{step}/{self.max_steps[k]}".replace("  ", " "))
                continue
            if rec.get("phase") == "stage 1":  # the organism's own progress file has stage 1's step and total
                from physrl.organisms._progress import progress_words

                running.append(f"{k} {progress_words(d) or 'stage 1'}")
                continue
            running.append(f"{k} {rec.get('phase', '')} {step}/{self.max_steps[k]}".replace("  ", " "))
        shown = running[:4] + ([f"+{len(running) - 4} more"] if len(running) > 4 else [])
        if not shown and len(self.finished) < len(self.run_dirs):
            shown = ["workers starting (each imports torch and transformers first)"]
        self.bar.n = steps
        self.bar.set_postfix_str("; ".join(shown), refresh=False)
        self.bar.refresh()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.update()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.bar.close()


def train_one(organism: dict, run_dir: str, resume: bool) -> str:
    """Train one organism (runs in a worker process); returns the run directory.

    An unfinished run with a manifest is resumed by ``organisms.train`` (from
    its last checkpoint, or from the start if it has none, never duplicating a
    logged batch); a directory without a manifest is moved aside to
    ``<run_id>.stale`` and the run starts afresh. A run that another live
    process is training raises ``organisms.RunInUse`` (reported as a failed run).
    """
    from physrl.organisms import OrganismConfig, train

    path = Path(run_dir)
    config = OrganismConfig(**{**organism, "progress": False})
    resume = resume and (path / "manifest.json").exists()
    if not resume:
        _move_aside(path)
    write_progress(path, 0, config.max_steps, "stage 1")
    train(config, path, resume=resume, log=lambda *a, **k: None,
          recorder_hook=lambda recorder, trainer: trainer.add_callback(_progress_callback(path, config.max_steps)))
    write_progress(path, config.max_steps, config.max_steps, "finished")
    return str(path)


def _move_aside(path: Path) -> None:
    """A run folder that holds anything is renamed ``<run_id>.stale`` (the run starts afresh)."""
    from physrl.organisms import run_lock

    if path.exists() and any(path.iterdir()):
        with run_lock(path):  # never move a folder that a live trainer (e.g. an orphaned worker) writes
            stale = path.with_name(path.name + ".stale")
            shutil.rmtree(stale, ignore_errors=True)
            path.rename(stale)


def train_population_job(organisms: list[dict], run_dirs: list[str], resume: bool,
                         population_id: str) -> list[tuple[str, str, str | None]]:
    """Train runs as one population (runs in a worker process, one executor job); returns
    ``(run_dir, status, error)`` per member (status ``finished`` or ``failed``, from its manifest).

    ``organisms``: each member's organism config as a mapping (with ``trainer = "population"``);
    ``run_dirs``: their folders, in member order. With ``resume`` and a manifest in any member's folder the
    population continues from the newest step every member checkpointed (``organisms.train_population``);
    otherwise folders holding anything are moved aside (``<run_id>.stale``) and the population starts afresh.
    Each member's step goes to its progress file (:func:`write_progress`).

    Raises
    ------
    RuntimeError
        Every member failed (each member that fails alone is only reported in the returned statuses).
    ValueError, ResumeMismatch
        Members that cannot share a population, or a resume with another config.
    """
    from physrl.organisms import OrganismConfig, train_population

    paths = [Path(d) for d in run_dirs]
    configs = [OrganismConfig(**{**o, "progress": False}) for o in organisms]
    resume = resume and any((p / "manifest.json").exists() for p in paths)
    if not resume:
        for p in paths:
            _move_aside(p)
    max_steps = configs[0].max_steps
    for p in paths:
        write_progress(p, 0, max_steps, "stage 1")

    def step(done: int) -> None:
        for p in paths:
            write_progress(p, done, max_steps, "GRPO")

    train_population(configs, paths, resume=resume, population_id=population_id, log=lambda *a, **k: None,
                     step_hook=step)
    out = []
    for p in paths:
        manifest = read_manifest(p)
        if manifest.status == "finished":
            write_progress(p, max_steps, max_steps, "finished")
        out.append((str(p), manifest.status, manifest.error))
    return out


@dataclass(frozen=True)
class PlannedPopulation:
    """Runs trained together as one population, one executor job.

    Attributes
    ----------
    population_id : str
        The population's name (manifests' ``organisms.trainer.population``).
    run_ids : tuple of str
        Its members' run ids (folders under ``DIR/runs``), in member order.
    resume : bool
        An earlier invocation started it (its record was found): continue it as a whole.
    """

    population_id: str
    run_ids: tuple[str, ...]
    resume: bool = False


def population_groups(jobs: list[tuple[str, dict]], size: int) -> list[list[str]]:
    """Run ids of ``jobs`` ((run_id, organism config mapping), in plan order) grouped into populations.

    Runs share a population only when their ``organisms.population_key`` is equal (architecture, step budget,
    batch shape, loss, optimizer, vocabulary: all but what a member owns). Each such set is split, in plan
    order, into ``ceil(n / size)`` populations whose sizes differ by at most one (42 runs, size 8: six of 7).

    Raises
    ------
    ValueError
        ``size`` < 1.
    """
    from physrl.organisms import OrganismConfig, population_key

    if size < 1:
        raise ValueError(f"population size must be >= 1, got {size}")
    by_key: dict[str, list[str]] = {}
    for run_id, organism in jobs:
        by_key.setdefault(population_key(OrganismConfig(**organism)), []).append(run_id)
    groups = []
    for ids in by_key.values():
        n = math.ceil(len(ids) / size)
        base, extra = divmod(len(ids), n)
        start = 0
        for g in range(n):
            stop = start + base + (g < extra)
            groups.append(ids[start:stop])
            start = stop
    return groups


def population_record(out_dir: str | Path, population_id: str) -> Path:
    """Where the experiment records a population's members: ``DIR/logs/populations/<population id>.json``."""
    return Path(out_dir) / "logs" / "populations" / f"{population_id}.json"


def _recorded_populations(out_dir: Path) -> list[tuple[str, list[str], Path]]:
    folder = Path(out_dir) / "logs" / "populations"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            out.append((str(data["population"]), [str(m) for m in data["members"]], path))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def plan_populations(out_dir: str | Path, jobs: list[tuple[str, dict]], size: int) -> list[PlannedPopulation]:
    """The populations that train ``jobs`` (unfinished runs with ``trainer = "population"``, plan order).

    A recorded population (:func:`population_record`) all of whose members are among ``jobs`` resumes as it
    was; the other runs are grouped anew (:func:`population_groups`) and recorded (written before any job is
    submitted). Records of populations that can no longer resume as a whole (some members finished or left
    the plan) are removed once their unfinished members are in new populations.
    """
    todo = {run_id for run_id, _ in jobs}
    planned, taken, obsolete = [], set(), []
    for population_id, members, path in _recorded_populations(Path(out_dir)):
        if members and set(members) <= todo and not set(members) & taken:
            planned.append(PlannedPopulation(population_id, tuple(members), resume=True))
            taken |= set(members)
        elif set(members) & todo:
            obsolete.append(path)
    rest = [(run_id, organism) for run_id, organism in jobs if run_id not in taken]
    for ids in population_groups(rest, size) if rest else []:
        population_id = f"population-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        record = population_record(out_dir, population_id)
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.tmp")
        tmp.write_text(json.dumps({"population": population_id, "members": ids}))
        tmp.replace(record)
        planned.append(PlannedPopulation(population_id, tuple(ids)))
    for path in obsolete:
        path.unlink(missing_ok=True)
    order = {run_id: i for i, (run_id, _) in enumerate(jobs)}
    return sorted(planned, key=lambda p: min(order[r] for r in p.run_ids))


def organism_configs(config: ExperimentConfig) -> dict[str, dict]:
    """The resolved organism config of every planned run, validated before anything trains.

    Raises
    ------
    ValueError
        A bad ``[organism]`` value, naming the field and its allowed range.
    """
    from physrl.organisms import OrganismConfig

    out = {}
    for r in plan_runs(config):
        try:
            resolved = OrganismConfig(**{**config.organism, **r.organism_overrides()})
            if not out and resolved.env_family != "digit-map":  # an external family: import and check it now
                from physrl.organisms import check_setup

                check_setup(resolved)
        except TypeError as err:  # unknown field: name it and the valid ones, as a config file's typo does
            from physrl.organisms._config import unknown_fields_message

            raise ValueError(f"[organism]: {unknown_fields_message(config.organism) or err}") from err
        except ValueError as err:
            raise ValueError(f"[organism] (run {r.run_id}): {err}") from err
        out[r.run_id] = resolved.to_dict()
    return out


def _config_mismatch(run_dir: Path, wanted: dict) -> list[str]:
    """Fields where a finished run's saved organism config differs from the planned one.

    A field the saved config lacks (the run was trained before the field
    existed) counts as equal when the planned value is the field's default:
    a new field's default keeps the behaviour the run was trained with.
    """
    from dataclasses import fields

    from physrl.organisms import OrganismConfig
    from physrl.organisms._config import REPORTING

    defaults = {f.name: f.default for f in fields(OrganismConfig) if f.default is not MISSING}
    defaults.update({f.name: f.default_factory() for f in fields(OrganismConfig) if f.default_factory is not MISSING})
    saved = (read_manifest(run_dir).organisms or {}).get("config", {})
    return sorted(k for k, v in wanted.items()
                  if k not in REPORTING and saved.get(k, defaults.get(k, MISSING)) != v)


def check_existing_runs(config: ExperimentConfig, out_dir: Path) -> None:
    """Refuse to reuse finished runs in ``out_dir`` that were trained with another config.

    Raises
    ------
    ValueError
        A bad organism config, or a finished run whose saved config differs
        (naming the run and the fields).
    """
    refuse_mixed_configs(out_dir, organism_configs(config))


def refuse_mixed_configs(out_dir: Path, resolved: dict[str, dict]) -> None:
    """Raise ValueError naming the first finished run in ``out_dir/runs`` whose saved config differs from
    ``resolved[run_id]`` (the organism config each planned run would be trained with) and the fields that differ:
    results would mix configs. Every experiment kind checks its plan through this one function."""
    for run_id, wanted in resolved.items():
        run_dir = Path(out_dir) / "runs" / run_id
        if run_status(run_dir) == "finished":
            differ = _config_mismatch(run_dir, wanted)
            if differ:
                raise ValueError(f"{run_dir} was trained with a different config ({', '.join(differ)}); "
                                 "results would mix configs: use a new --out folder")


def train_all(config: ExperimentConfig, out_dir: Path, *, progress: bool = True,
              role: str | None = None) -> dict[str, Path]:
    """Train every planned run (of ``role``, or all) not yet finished; returns run_id -> run directory.

    Raises
    ------
    ValueError
        A bad organism config, or a finished run in ``out_dir`` that was
        trained with a different config (use a new output folder).
    RuntimeError
        If any run failed (after every other run was given its chance); the
        message names each failed run and its error.
    """
    check_existing_runs(config, out_dir)
    plan = plan_runs(config, role)
    jobs = [(r.run_id, {**config.organism, **r.organism_overrides()}) for r in plan]
    return train_planned(config.executor, out_dir, jobs, progress=progress, desc=f"{role or 'organism'} runs")


def train_planned(executor_config, out_dir: Path, jobs: list[tuple[str, dict]], *, progress: bool = True,
                  desc: str = "organism runs") -> dict[str, Path]:
    """Train planned organism runs through an executor, skipping finished ones and resuming unfinished ones.

    The one training loop of every experiment (the diversity experiment's :func:`train_all`, the takeoff
    experiment): runs are submitted in ``jobs`` order, each into ``DIR/runs/<run_id>``.

    Parameters
    ----------
    executor_config : ExecutorConfig
    out_dir : path
        The experiment's folder; runs go to ``out_dir/runs``, executor logs to ``out_dir/logs``.
    jobs : list of (run_id, organism overrides)
        The organism config of each run as a mapping of ``OrganismConfig`` fields.
    progress : bool
    desc : str
        The progress bar's label.

    Returns
    -------
    dict
        run_id -> run directory, for every job.

    Raises
    ------
    RuntimeError
        If any run failed (after every other run was given its chance); the
        message names each failed run and its error.
    """
    runs_dir = Path(out_dir) / "runs"
    dirs = {run_id: runs_dir / run_id for run_id, _ in jobs}
    runs_dir.mkdir(parents=True, exist_ok=True)
    todo = [(run_id, organism) for run_id, organism in jobs if run_status(dirs[run_id]) != "finished"]
    organism_of = dict(todo)
    pooled = [(run_id, organism) for run_id, organism in todo if organism.get("trainer", "trl") == "population"]
    solo = [organism for _, organism in todo if organism.get("trainer", "trl") != "population"]
    if solo:  # population_size with TRL runs would silently do nothing
        check_population_size(solo[0], executor_config)
    populations = plan_populations(out_dir, pooled, executor_config.members_per_population()) if pooled else []
    # jobs in plan order: one per TRL run, one per population
    units = [((run_id,), None) for run_id, organism in todo if organism.get("trainer", "trl") != "population"]
    units += [(p.run_ids, p) for p in populations]
    order = {run_id: i for i, (run_id, _) in enumerate(todo)}
    units.sort(key=lambda u: order[u[0][0]])
    failures = []
    with Executor(executor_config, Path(out_dir) / "logs") as executor:
        handles = []
        for ids, population in units:
            if population is None:
                run_id = ids[0]
                resume = run_status(dirs[run_id]) == "unfinished"
                handles.append((ids, None, executor.submit(train_one, organism_of[run_id], str(dirs[run_id]),
                                                           resume)))
            else:
                handles.append((ids, population, executor.submit(
                    train_population_job, [organism_of[r] for r in ids], [str(dirs[r]) for r in ids],
                    population.resume, population.population_id)))
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="run", disable=not progress,
                   position=0)
        steps = StepMonitor({run_id: dirs[run_id] for run_id, _ in todo},
                            {run_id: int(organism.get("max_steps", _default_max_steps())) for run_id, organism in todo},
                            enabled=progress and bool(todo), desc=f"{desc.removesuffix(' runs')} GRPO steps",
                            groups={p.population_id: list(p.run_ids) for p in populations if len(p.run_ids) > 1})
        try:
            for i, handle in executor.as_completed([h for _, _, h in handles]):
                ids, population = handles[i][0], handles[i][1]
                try:
                    result = executor.result(handle)
                    if population is not None:
                        failures += [f"{run_id}: {error or status} (member of {population.population_id})"
                                     for run_id, (_, status, error) in zip(ids, result) if status != "finished"]
                except Exception as err:  # noqa: BLE001 - report every failed run together
                    where = f" (member of {population.population_id})" if population is not None else ""
                    failures += [f"{run_id}: {type(err).__name__}: {err}{where}" for run_id in ids]
                for run_id in ids:
                    steps.done(run_id)
                last = ids[0] if population is None else f"population of {len(ids)} ({ids[0]}, ...)"
                bar.set_postfix_str(f"last {last}", refresh=False)
                bar.update(len(ids))
        finally:
            steps.close()
            bar.close()
    if failures:
        raise RuntimeError("organism runs failed (rerun the same command to resume them):\n  "
                           + "\n  ".join(failures))
    return dirs


def _default_max_steps() -> int:
    from physrl.organisms import OrganismConfig

    return OrganismConfig.max_steps


def plan_table(config: ExperimentConfig) -> list[dict]:
    """The plan as rows (for the report and summary)."""
    return [{"run_id": r.run_id, **asdict(r)} for r in plan_runs(config)]
