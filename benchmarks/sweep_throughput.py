"""A small sweep trained today's way and the population way in one invocation, and the GRPO phase against its floor.

Issue 20 asks for sweeps of ~1,000 organism runs. This benchmark trains the
same small sweep twice, each way in fresh processes that pay their own imports,
with a cold stage-1 cache of its own (a sweep's runs of one stage-1 model share
it through the cache, so stage 1 runs once per way):

* **old way** - solo TRL runs (``organisms.train``, ``trainer = "trl"``) as the
  experiment's local executor runs them: a ``spawn`` process pool of
  ``--workers`` workers (default 2, the cores of this machine; each with one
  torch thread, :class:`physrl.experiment.executors.Executor`);
* **new way** - ``organisms.train_population`` with the runs as members of one
  population (``--populations P`` splits them into P populations trained in P
  parallel processes; default 1, one process, one core).

The sweep: ``--runs`` runs of one stage-1 model (seed 0, p0 0.1, a fixed family
of 10 environments) that differ in N (1, 2, ..., cycling up to 8), ``--steps``
GRPO steps each, every other setting the default config's.

In the same invocation it measures the GRPO phase of one solo run against its
floor, both in CPU milliseconds per step of the one-thread process (what a step
costs a core of its own; on this shared machine the wall clock runs 2-5x the CPU
time whenever other agents' jobs load the two cores, the CPU clock far less):
``grpo_ms_per_step`` is one solo run trained alone afterwards (stage 1 cached),
CPU time from ``on_train_begin`` to ``on_train_end`` (generation, scoring,
optimizer, eval passes, logging, checkpoints) per step; ``floor_ms_per_step`` is
:mod:`benchmarks.organism_floor`'s GRPO floor, the scoring forward + backward at
GRPO's batch shape plus the KV-cached decoder's forward passes for one batch,
least of two measurements (before and after the sweep). The wall-clock versions
(the manifests' ``grpo_seconds`` per step, least over all solo runs) and both
ways' CPU seconds (the children's ``getrusage``, pool workers included) are
printed on the line before, with ``uptime``'s load next to every number. The
sweep speed-up of the last line is the wall-clock ratio the issue asks for;
under load it favours the way with more processes (two pool workers against one
population process get two shares of the cores against one), which the CPU
ratio on the line before does not. Last line::

    sweep_speedup=<old/new wall> runs=<n> old_seconds_per_run=... new_seconds_per_run=... grpo_ms_per_step=...
    floor_ms_per_step=...

Goal (issue 20): sweep_speedup >= 2 on this 2-core machine and grpo_ms_per_step <= 1.3 x floor_ms_per_step.

    OMP_NUM_THREADS=1 python benchmarks/sweep_throughput.py [--runs 8] [--steps 400] [--workers 2] [--populations 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def uptime() -> str:
    """The load averages (1, 5, 15 min) as ``uptime`` prints them."""
    return "load " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def sweep_configs(runs: int, steps: int, pretrain_steps: int | None, cache: Path) -> list[dict]:
    """The sweep's run configs (dicts of :class:`OrganismConfig` fields): one stage-1 model, N cycling 1..8."""
    out = []
    for i in range(runs):
        fields = {"seed": 0, "p0": 0.1, "family_size": 10, "n_envs": 1 + i % 8, "max_steps": steps,
                  "progress": False, "stage1_cache": str(cache)}
        if pretrain_steps is not None:
            fields["pretrain_steps"] = pretrain_steps
        out.append(fields)
    return out


def _solo(fields: dict, run_dir: str) -> str:
    """One solo TRL run in a pool worker (the executor sets one torch thread)."""
    from physrl.organisms import OrganismConfig, train

    train(OrganismConfig(**fields), run_dir, log=lambda *a: None)
    return run_dir


def _old_way_main(spec: Path) -> None:
    """Child process: the runs through the experiment's local executor (a spawn pool of ``workers``)."""
    from physrl.experiment.executors import Executor, ExecutorConfig

    job = json.loads(spec.read_text())
    with Executor(ExecutorConfig(engine="local", max_workers=job["workers"]), Path(job["root"])) as ex:
        handles = [ex.submit(_solo, fields, run_dir) for fields, run_dir in zip(job["configs"], job["run_dirs"])]
        for h in handles:
            ex.result(h)


def _solo_main(spec: Path) -> None:
    """Child process: one solo TRL run alone; writes the CPU seconds of its GRPO phase (``trainer.train``) and its
    step count next to the spec (``<spec>.cpu``)."""
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(1)
    from physrl.organisms import OrganismConfig, train

    job = json.loads(spec.read_text())
    marks = {}

    class CpuClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            marks["begin"], marks["step0"] = time.process_time(), state.global_step

        def on_train_end(self, args, state, control, **kw):
            marks["end"], marks["steps"] = time.process_time(), state.global_step - marks["step0"]

    train(OrganismConfig(**job["configs"][0]), job["run_dirs"][0], log=lambda *a: None,
          recorder_hook=lambda recorder, trainer: trainer.add_callback(CpuClock()))
    Path(f"{spec}.cpu").write_text(json.dumps({"seconds": marks["end"] - marks["begin"], "steps": marks["steps"]}))


def _new_way_main(spec: Path) -> None:
    """Child process: one population of the given members."""
    import torch

    torch.set_num_threads(1)
    from physrl.organisms import OrganismConfig, train_population

    job = json.loads(spec.read_text())
    train_population([OrganismConfig(**f) for f in job["configs"]], job["run_dirs"], log=lambda *a: None)


def _child_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children and their waited-for descendants."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _child(kind: str, job: dict, root: Path) -> tuple[float, float, Path]:
    """Run ``kind`` (old / solo) in a fresh interpreter; returns its wall and CPU seconds (imports and pool workers
    included) and its spec file."""
    spec = root / f"{kind}-{time.time_ns()}.json"
    spec.write_text(json.dumps(job))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0, c0 = time.perf_counter(), _child_cpu()
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--spec", str(spec)], env=env,
                          capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - t0, _child_cpu() - c0
    if proc.returncode:
        sys.exit(f"{kind} way failed:\n{proc.stderr[-4000:]}")
    return seconds, cpu, spec


def grpo_ms(run_dirs) -> list[float]:
    """Each finished run's GRPO phase, ms per step (manifest ``organisms.grpo_seconds`` / ``steps``)."""
    out = []
    for d in run_dirs:
        m = json.loads((Path(d) / "manifest.json").read_text())
        if m["status"] != "finished":
            raise RuntimeError(f"{d}: status {m['status']} ({m.get('error')})")
        out.append(1000 * m["organisms"]["grpo_seconds"] / m["steps"])
    return out


def floor_ms(steps: int, clock: str) -> tuple[float, float]:
    """(scoring, generation) ms per GRPO step: :func:`organism_floor.grpo` (the faster forward) and
    :func:`organism_floor.generation`, ``steps`` repetitions each, timed by ``clock`` (``wall`` or ``cpu``: this
    process's CPU time, what the step costs a core of its own, steadier when other jobs share the cores)."""
    sys.path.insert(0, str(HERE))
    from types import SimpleNamespace

    import torch

    import organism_floor

    torch.set_num_threads(1)
    saved = organism_floor.time
    organism_floor.time = SimpleNamespace(perf_counter=time.process_time if clock == "cpu" else time.perf_counter)
    try:
        scoring, _ = organism_floor.grpo(steps)
        return min(scoring.values()), organism_floor.generation(steps)
    finally:
        organism_floor.time = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400, help="GRPO steps per run")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="stage-1 steps (default: the config's)")
    parser.add_argument("--workers", type=int, default=2, help="old way: the executor's process pool size")
    parser.add_argument("--populations", type=int, default=1, help="new way: populations trained in parallel")
    parser.add_argument("--floor-steps", type=int, default=100, help="repetitions of each floor measurement")
    parser.add_argument("--keep", type=Path, help="keep the runs under this folder")
    parser.add_argument("--child", choices=["old", "new", "solo"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return {"old": _old_way_main, "new": _new_way_main, "solo": _solo_main}[args.child](args.spec)
    if args.runs < 1 or args.steps < 1 or args.workers < 1 or not 1 <= args.populations <= args.runs:
        parser.error("--runs, --steps, --workers >= 1 and 1 <= --populations <= --runs")

    print(f"start: {uptime()}", flush=True)
    floors = {"cpu": [floor_ms(args.floor_steps, "cpu")], "wall": [floor_ms(args.floor_steps, "wall")]}
    for clock, f in floors.items():
        print(f"floor ({clock}, before): scoring {f[-1][0]:.2f} + generation {f[-1][1]:.2f} ms/step; {uptime()}",
              flush=True)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
        root = Path(tmp)
        ways = {}
        for kind in ("old", "new"):
            base = root / kind
            base.mkdir()
            configs = sweep_configs(args.runs, args.steps, args.pretrain_steps, base / "stage1_cache")
            run_dirs = [str(base / f"run{i}") for i in range(args.runs)]
            if kind == "old":
                seconds, cpu, _ = _child("old", {"workers": args.workers, "root": str(base), "configs": configs,
                                                 "run_dirs": run_dirs}, base)
            else:
                parts = [list(range(p, args.runs, args.populations)) for p in range(args.populations)]
                env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
                t0, c0 = time.perf_counter(), _child_cpu()
                procs = []
                for p, members in enumerate(parts):
                    spec = base / f"population{p}.json"
                    spec.write_text(json.dumps({"configs": [configs[i] for i in members],
                                                "run_dirs": [run_dirs[i] for i in members]}))
                    procs.append(subprocess.Popen([sys.executable, __file__, "--child", "new", "--spec", str(spec)],
                                                  env=env, stderr=subprocess.PIPE, text=True))
                for proc in procs:
                    _, err = proc.communicate()
                    if proc.returncode:
                        sys.exit(f"new way failed:\n{err[-4000:]}")
                seconds, cpu = time.perf_counter() - t0, _child_cpu() - c0
            ways[kind] = (seconds, cpu, run_dirs)
            ms = grpo_ms(run_dirs)
            print(f"{kind} way: {args.runs} runs in {seconds:.1f} s wall, {cpu:.1f} s CPU ({seconds / args.runs:.1f} s "
                  f"wall, {cpu / args.runs:.1f} s CPU per run); GRPO phase per run {min(ms):.1f}-{max(ms):.1f} ms/step "
                  f"wall; {uptime()}", flush=True)
        # one solo run alone (its stage 1 from the old way's cache): today's GRPO phase without a second worker
        solo = sweep_configs(1, args.steps, args.pretrain_steps, root / "old" / "stage1_cache")[0]
        solo_dir = str(root / "solo")
        _, _, spec = _child("solo", {"configs": [solo], "run_dirs": [solo_dir]}, root)
        clock = json.loads(Path(f"{spec}.cpu").read_text())
        solo_cpu = 1000 * clock["seconds"] / clock["steps"]
        solo_wall = grpo_ms([solo_dir])[0]
        print(f"solo run alone (N = {solo['n_envs']}): GRPO phase {solo_wall:.1f} ms/step wall, {solo_cpu:.1f} ms/step "
              f"CPU; {uptime()}", flush=True)
        grpo_wall = min([solo_wall, *grpo_ms(ways["old"][2])])
    for clock in ("cpu", "wall"):
        floors[clock].append(floor_ms(args.floor_steps, clock))
        print(f"floor ({clock}, after): scoring {floors[clock][-1][0]:.2f} + generation {floors[clock][-1][1]:.2f} "
              f"ms/step; {uptime()}", flush=True)
    floor = {clock: min(f[0] for f in fl) + min(f[1] for f in fl) for clock, fl in floors.items()}
    old, new = ways["old"][0] / args.runs, ways["new"][0] / args.runs
    old_cpu, new_cpu = ways["old"][1] / args.runs, ways["new"][1] / args.runs
    print(f"GRPO phase / floor: CPU {solo_cpu:.1f} / {floor['cpu']:.1f} = {solo_cpu / floor['cpu']:.2f}, wall "
          f"{grpo_wall:.1f} / {floor['wall']:.1f} = {grpo_wall / floor['wall']:.2f} (goal <= 1.3); sweep speed-up wall "
          f"{old / new:.2f}, CPU {old_cpu / new_cpu:.2f} ({old_cpu:.1f} / {new_cpu:.1f} CPU s per run; goal >= 2); "
          f"workers {args.workers}, populations {args.populations}; end: {uptime()}")
    print(f"sweep_speedup={old / new:.2f} runs={args.runs} old_seconds_per_run={old:.1f} new_seconds_per_run={new:.1f} "
          f"grpo_ms_per_step={solo_cpu:.1f} floor_ms_per_step={floor['cpu']:.1f}")


if __name__ == "__main__":
    main()
