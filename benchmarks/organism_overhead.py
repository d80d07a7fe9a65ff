"""GRPO steps per second with and without organisms' logging and classification, in one run.

One default-config organism run (tiny Llama, 4 training envs) alternates
blocks of ``--block`` optimizer steps with the rollout recorder on (score +
classify + buffer rows, Parquet flush at the end of the block) and off
(score only). Eval passes and TRL checkpoints are switched off so the two
kinds of block differ only by our per-rollout work. The first block is
warm-up and not counted.

    python benchmarks/organism_overhead.py [--steps 200] [--block 20]

Two overhead measures are printed: the block comparison (on vs off steps;
noisy, because blocks differ in the policy's completions and the machine's
load) and direct accounting of the seconds spent in our classification, row
buffering and Parquet flushes. Last line: ``overhead=X steps_per_s=Y
rollouts_per_s=Z`` with X the direct measure (time in our code / rest of the
step), Y and Z measured with logging on. Goal: X <= 0.10.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from transformers import TrainerCallback

from physrl.organisms import OrganismConfig, train


class BlockTimer(TrainerCallback):
    """Times every optimizer step; switches the recorder on/off in alternating blocks.

    Also accounts directly for the time spent inside our logging and
    classification (the part of the recorder that ``enabled`` switches), a
    measure that training dynamics between blocks cannot confound.
    """

    def __init__(self, recorder, block: int):
        self.recorder, self.block = recorder, block
        self.t = None
        self.durations = {True: [], False: []}
        self.logging_seconds = 0.0
        classify, add, flush = recorder.classifier.classify, recorder.writer.add, recorder.writer.flush

        def timed(fn):
            def wrapper(*a, **k):
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    self.logging_seconds += time.perf_counter() - t0
            return wrapper

        recorder.classifier.classify = timed(classify)
        recorder.writer.add = timed(add)
        recorder.writer.flush = timed(flush)

    def on_step_begin(self, args, state, control, **kw):
        if self.t is None:
            self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        step = state.global_step
        on = self.recorder.enabled
        if step % self.block == 0 and on:
            self.recorder.writer.flush()  # the chunk write belongs to the logging cost
        now = time.perf_counter()
        if step > self.block:  # first block: warm-up
            self.durations[on].append(now - self.t)
        elif step == self.block:
            self.logging_seconds = 0.0
        self.t = now
        if step % self.block == 0:
            self.recorder.enabled = (step // self.block) % 2 == 0  # blocks alternate on/off


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    args = parser.parse_args()
    config = OrganismConfig(max_steps=args.steps, eval_every=10 ** 6, checkpoint_every=10 ** 6, progress=False,
                            pretrain_steps=args.pretrain_steps)
    timers = []

    def hook(recorder, trainer):
        timer = BlockTimer(recorder, args.block)
        trainer.add_callback(timer)
        timers.append(timer)

    with tempfile.TemporaryDirectory() as tmp:
        train(config, f"{tmp}/run", recorder_hook=hook, log=lambda *a: None)
    timer = timers[0]
    on, off = np.mean(timer.durations[True]), np.mean(timer.durations[False])
    batch = config.groups_per_step * config.num_generations
    print(f"steps timed: logging on {len(timer.durations[True])}, off {len(timer.durations[False])}")
    print(f"seconds per step: on {on * 1e3:.1f} ms, off {off * 1e3:.1f} ms; batch {batch} rollouts per step")
    print(f"steps/s: on {1 / on:.2f}, off {1 / off:.2f}; rollouts/s with logging {batch / on:.0f}")
    per_step = timer.logging_seconds / max(len(timer.durations[True]), 1)
    direct = per_step / (on - per_step)
    print(f"block comparison: overhead {on / off - 1:+.3f} (noisy: blocks differ in policy and machine load)")
    print(f"direct accounting: {per_step * 1e3:.2f} ms per step in logging + classification -> overhead {direct:.3f}")
    print(f"overhead={direct:.3f} steps_per_s={1 / on:.2f} rollouts_per_s={batch / on:.0f}")


if __name__ == "__main__":
    main()
