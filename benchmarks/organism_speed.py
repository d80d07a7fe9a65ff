"""Wall time of one default organism run, by phase, against the code of commit 08702a2.

One default run (N = 4 training envs + 2 held out, 600 stage-1 steps, 400
GRPO steps, eval every 20; one torch thread) is trained in a fresh process
with the stage-1 cache cold, and its wall time is split into phases the way
issue 10's table was made: start-up imports, stage-1 pretraining, rollout
generation (model forward vs the per-token bookkeeping around it), TRL's
loss/backward/optimizer, TRL's other work, eval passes, reward +
classification + Parquet, checkpoints, and the rest (set-up, saving).

When the code of commit 08702a2 is checked out (``--baseline``, default
``/work/baseline``; the old layout, imported as ``organisms``), the same run
is trained on it in another fresh process of this benchmark invocation, so
the ratio is measured side by side under the same machine load. The two
runs' logged rollouts are compared row for row.

    python benchmarks/organism_speed.py [--baseline DIR | --no-baseline] [--repeats 1] [--no-warm]
                                        [--max-steps 400] [--pretrain-steps 600]

``--warm`` (default on) also times a second run in the same parent folder,
whose stage 1 is a cache hit. Processes run one after the other (new, old,
new, old, ...) with ``OMP_NUM_THREADS=1``; ``uptime`` load is printed before
and after. Last lines::

    speedup_vs_08702a2=X cpu_speedup_vs_08702a2=X' old_seconds_per_run=Y rows_identical=True warm_seconds_per_run=Z
    seconds_per_run=A grpo_steps_per_s=B stage1_seconds=C

(``seconds_per_run`` is the cold run's wall time, including the Python
start-up and imports; ``grpo_steps_per_s`` = GRPO steps / trainer.train()
seconds; medians over ``--repeats``. The CPU ratio is the processes' CPU
time, steadier than wall time when other jobs share the cores.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = [
    "start-up imports", "stage-1 pretraining", "rollout generation: model forward",
    "rollout generation: per-token bookkeeping", "TRL loss, backward, optimizer", "TRL other", "eval passes",
    "reward, classify, Parquet", "checkpoints", "set-up, saving, other",
]


# ---- child: one instrumented run ---------------------------------------------------------------------------------
class PhaseTimer:
    """Exclusive wall and CPU time per phase label, from wrapped functions (a call stack of labels).

    A wrapped call adds its time, minus the time of wrapped calls nested in
    it, to its label. A *sealed* label (stage 1, eval passes) takes all of its
    time, nested calls included. ``only_inside`` restricts a label to calls
    made inside another label (a model forward counts as "rollout generation:
    model forward" only inside the GRPO rollout function).
    """

    def __init__(self):
        self.seconds: dict[str, list[float]] = {}  # label -> [wall, cpu]
        self.stack: list[list] = []  # [label, sealed, child wall, child cpu]

    def wrap(self, owner, name: str, label: str, sealed: bool = False, only_inside: str | None = None) -> None:
        fn = getattr(owner, name)
        timer = self

        def wrapper(*args, **kwargs):
            if any(frame[1] for frame in timer.stack) or (
                    only_inside is not None and not any(frame[0] == only_inside for frame in timer.stack)):
                return fn(*args, **kwargs)
            frame = [label, sealed, 0.0, 0.0]
            timer.stack.append(frame)
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                timer.stack.pop()
                acc = timer.seconds.setdefault(label, [0.0, 0.0])
                acc[0] += wall - frame[2]
                acc[1] += cpu - frame[3]
                if timer.stack:
                    timer.stack[-1][2] += wall
                    timer.stack[-1][3] += cpu

        wrapper.__wrapped__ = fn
        setattr(owner, name, wrapper)


def child(args) -> None:
    t_launch = float(os.environ["ORGANISM_SPEED_LAUNCH"])
    if args.child == "old":
        sys.path.insert(0, str(args.baseline))
        import organisms as pkg
        from organisms import _train
        from organisms import _train as stage1_owner
        from organisms._logs import RolloutWriter
        from transformers import LlamaForCausalLM as forward_owner  # generation calls the model's forward
    else:
        import physrl.organisms as pkg
        from physrl.contract import ChunkWriter as RolloutWriter
        from physrl.organisms import _train
        from physrl.organisms.families.digit_map import stage1 as stage1_owner
        from physrl.organisms._decode import CachedDecoder as forward_owner  # lean path or the model's forward
    import torch
    from accelerate import Accelerator
    from transformers import Trainer
    from trl import GRPOTrainer

    t_imports, c_imports = time.time(), time.process_time()
    torch.set_num_threads(1)
    timer = PhaseTimer()
    gen_label = "rollout generation: per-token bookkeeping"
    make = _train.make_rollout_func

    def make_rollout_func(*a, **k):
        holder = type("Holder", (), {"rollout_func": staticmethod(make(*a, **k))})
        timer.wrap(holder, "rollout_func", gen_label)
        return holder.rollout_func

    _train.make_rollout_func = make_rollout_func
    timer.wrap(stage1_owner, "pretrain", "stage-1 pretraining", sealed=True)
    timer.wrap(_train, "evaluate", "eval passes", sealed=True)
    timer.wrap(forward_owner, "step" if args.child == "new" else "forward", "rollout generation: model forward",
               only_inside=gen_label)
    for owner, name in ((GRPOTrainer, "compute_loss"), (Accelerator, "backward"), (Accelerator, "clip_grad_norm_"),
                        (torch.optim.AdamW, "step"), (torch.optim.AdamW, "zero_grad")):
        timer.wrap(owner, name, "TRL loss, backward, optimizer")
    timer.wrap(_train.RolloutRecorder, "__call__", "reward, classify, Parquet")
    timer.wrap(RolloutWriter, "flush", "reward, classify, Parquet")
    timer.wrap(Trainer, "_save_checkpoint", "checkpoints")
    timer.wrap(Trainer, "train", "TRL other")
    timer.wrap(_train, "train", "set-up, saving, other")
    config = pkg.OrganismConfig(progress=False, max_steps=args.max_steps, pretrain_steps=args.pretrain_steps)
    _train.train(config, args.out, log=lambda *a: None)
    t_end, c_end = time.time(), time.process_time()
    timer.seconds["start-up imports"] = [t_imports - t_launch, c_imports]
    manifest = json.loads((Path(args.out) / "manifest.json").read_text())
    record = manifest.get("organisms") or manifest  # 08702a2 wrote these keys at the top level
    result = {"wall": t_end - t_launch, "cpu": c_end, "phases": timer.seconds,
              "grpo_seconds": record["grpo_seconds"], "stage1": record.get("stage1"), "max_steps": args.max_steps}
    Path(args.result).write_text(json.dumps(result))


# ---- parent -----------------------------------------------------------------------------------------------------
def run_child(kind: str, out: Path, args) -> dict:
    result = out.with_suffix(".json")
    cmd = [sys.executable, __file__, "--child", kind, "--out", str(out), "--result", str(result),
           "--max-steps", str(args.max_steps), "--pretrain-steps", str(args.pretrain_steps)]
    if kind == "old":
        cmd += ["--baseline", str(args.baseline)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "ORGANISM_SPEED_LAUNCH": repr(time.time())}
    if kind == "old":  # the old layout must not see this checkout's package
        env["PYTHONPATH"] = str(args.baseline)
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode:
        sys.exit(f"{kind} run failed:\n{proc.stderr[-3000:]}")
    data = json.loads(result.read_text())
    data["process_wall"] = wall
    return data


def compare_rows(a: Path, b: Path) -> tuple[bool, int, int]:
    """(identical, differing rows, rows) between two runs' rollout logs, matched on (step, phase, group, order)."""
    import pandas as pd

    cols = ["step", "phase", "env_id", "group_id", "prompt", "completion", "reward", "rs"]
    order = ["step", "phase", "group_id", "env_id", "completion"]
    frames = [pd.concat([pd.read_parquet(p) for p in sorted((run / "rollouts").glob("part-*.parquet"))])[cols]
              .sort_values(order).reset_index(drop=True) for run in (a, b)]
    if len(frames[0]) != len(frames[1]):
        return False, abs(len(frames[0]) - len(frames[1])), max(map(len, frames))
    differ = int((frames[0] != frames[1]).any(axis=1).sum())
    return differ == 0, differ, len(frames[0])


def table(results: list[dict], title: str) -> None:
    wall = statistics.median(r["process_wall"] for r in results)
    cpu = statistics.median(r["cpu"] for r in results)
    print(f"\n{title}: {wall:.1f} s wall, {cpu:.1f} s CPU (median of {len(results)})")
    print(f"  {'phase':<44}{'wall s':>8}{'share':>7}{'CPU s':>8}{'share':>7}")
    for phase in PHASES:
        row = []
        for k, total in ((0, "process_wall"), (1, "cpu")):
            if phase == "set-up, saving, other":
                values = [r[total] - sum(v[k] for p, v in r["phases"].items() if p != phase) for r in results]
            else:
                values = [r["phases"].get(phase, [0.0, 0.0])[k] for r in results]
            row.append(statistics.median(values))
        print(f"  {phase:<44}{row[0]:>8.2f}{row[0] / wall:>7.0%}{row[1]:>8.2f}{row[1] / cpu:>7.0%}")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, default=Path("/work/baseline"),
                        help="checkout of commit 08702a2 (old layout); skipped when absent")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-warm", dest="warm", action="store_false")
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--keep", type=Path, help="keep the runs under this folder")
    parser.add_argument("--child", choices=["new", "old"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    baseline = not args.no_baseline and (args.baseline / "organisms" / "_train.py").exists()
    print(f"load before: {uptime()}")
    new, old, warm, identical = [], [], [], []
    with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
        for rep in range(args.repeats):
            root = Path(tmp) / f"rep{rep}"
            root.mkdir()
            new.append(run_child("new", root / "new" / "run", args))  # own parent folder: stage-1 cache cold
            print(f"repeat {rep}: new code {new[-1]['process_wall']:.1f} s", flush=True)
            if baseline:
                old.append(run_child("old", root / "old" / "run", args))
                same = compare_rows(root / "new" / "run", root / "old" / "run")
                identical.append(same)
                print(f"repeat {rep}: 08702a2 {old[-1]['process_wall']:.1f} s; rollouts identical: {same[0]} "
                      f"({same[1]} of {same[2]} rows differ)", flush=True)
            if args.warm:
                warm.append(run_child("new", root / "new" / "run-warm", args))  # same parent: cache hit
                print(f"repeat {rep}: new code, stage-1 cache warm {warm[-1]['process_wall']:.1f} s", flush=True)
    print(f"load after: {uptime()}")
    table(new, "this checkout, stage-1 cache cold")
    if old:
        table(old, "08702a2")
    if warm:
        table(warm, "this checkout, stage-1 cache warm (hit)")
    seconds = statistics.median(r["process_wall"] for r in new)
    steps = statistics.median(r["max_steps"] / r["grpo_seconds"] for r in new)
    stage1 = statistics.median(r["phases"].get("stage-1 pretraining", [0.0])[0] for r in new)
    extra = []
    if old:
        old_seconds = statistics.median(r["process_wall"] for r in old)
        ratios = [o["process_wall"] / n["process_wall"] for o, n in zip(old, new)]
        cpu_ratios = [o["cpu"] / n["cpu"] for o, n in zip(old, new)]
        extra += [f"speedup_vs_08702a2={statistics.median(ratios):.2f}",
                  f"cpu_speedup_vs_08702a2={statistics.median(cpu_ratios):.2f}", f"old_seconds_per_run={old_seconds:.1f}",
                  f"rows_identical={all(s[0] for s in identical)}"]
    if warm:
        extra.append(f"warm_seconds_per_run={statistics.median(r['process_wall'] for r in warm):.1f}")
    if extra:
        print(" ".join(extra))
    print(f"seconds_per_run={seconds:.1f} grpo_steps_per_s={steps:.1f} stage1_seconds={stage1:.1f}")


if __name__ == "__main__":
    main()
