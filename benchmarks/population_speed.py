"""Population training's cost per member: ms per member-step and memory per member at K = 1, 8, 32, 128.

Issue 20 (item 2) trains K organisms in lockstep with their weights stacked
(``organisms._stacked.StackedLlama``, ``organisms._population.PopulationGRPO``).
This benchmark times one GRPO update of a population of the default organism
(the tiny Llama, 64 wide, 2 layers; ``groups_per_step * num_generations`` = 32
completions per member, prompts of 7 tokens left-padded by one in half the rows,
completions of 13 tokens with a ragged end and the note's 2 environment tokens
masked, as :func:`benchmarks.organism_floor.policy_batch` lays a batch out),
fed fixed batches so that only the update is timed:

* **update** - pack the K members' batches, the stacked forward of all
  completions, TRL's ``_compute_loss`` per member, backward, per-member
  clipping, fused AdamW; ms per member-step = step time / K (least of
  ``--rounds`` timings of ``max(3, --member-steps // K)`` steps each);
* **forward share** - the part of it in the stacked forward + backward alone,
  and the cost per member of TRL's ``_compute_loss`` (called once per member:
  its loss and its metrics, with their host synchronisations);
* **TRL alone** - for reference, TRL's ``GRPOTrainer`` on one member with a
  ``rollout_func`` that returns the same fixed batch (no generation): its
  ms per optimizer step, bookkeeping included;
* **generation** - the population's rollouts of one GRPO step, sampled two
  ways in the same run: *looped* (the organisms' sampler on each member's
  model view in turn, ``sample_rollouts``; cost per member independent of K;
  how populations sampled before batching) and *batched* (all K members in
  one stacked, KV-cached decode, ``organisms._stacked_decode``, each member
  with its own seed and requests; what the population trainer runs): ms per
  member-step, least of ``--rounds``;
* **memory per member** - parameters + gradients + AdamW's two moments
  (exact bytes), and the activations autograd saves for backward at this batch
  (summed through ``torch.autograd.graph.saved_tensors_hooks``, each storage
  once), divided by K; on CUDA also ``torch.cuda.max_memory_allocated`` / K.

The device is chosen at run time (CUDA when present, ``--device`` to force).
Last line::

    population_speed device=D 1:a,8:b,32:c,128:d ms_per_member_step trl_alone_ms_per_step=T
    generation_ms_per_member_step=1:g1,8:g8,... generation_looped_ms_per_member_step=G0 memory_per_member_mb=M

Run: ``OMP_NUM_THREADS=1 python benchmarks/population_speed.py [--max-k 32]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
import warnings


def member_batch(tokenizer, config, seed: int):
    """One member's fixed GRPO batch (:class:`organisms._population.MemberBatch`), the default organism's shape."""
    import numpy as np

    from physrl.organisms._population import MemberBatch

    rng = np.random.default_rng(seed)
    n = config.groups_per_step * config.num_generations
    prompt = 3 + config.input_length
    completion = 5 + config.input_length + round(config.note_reveal * config.input_length)
    vocab = len(tokenizer)
    prompts, completions, masks, rewards = [], [], [], []
    for g in range(config.groups_per_step):
        p = rng.integers(3, vocab, prompt - (g % 2)).tolist()
        for _ in range(config.num_generations):
            c = rng.integers(3, vocab, completion - int(rng.integers(0, 4))).tolist()
            prompts.append(p)
            completions.append(c)
            masks.append([1, 1, 0, 0] + [1] * (len(c) - 4))
            rewards.append(float(rng.choice([0.0, 0.25, 0.5, 1.0])))
    return MemberBatch(prompt_ids=prompts, completion_ids=completions, rewards=rewards, env_mask=masks)


def grpo_args(config, device, out: str):
    from physrl.organisms import make_family
    from physrl.organisms._train import _grpo_args
    from pathlib import Path

    return _grpo_args(config, Path(out), device, make_family(config))


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs (each storage once)."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        try:
            ptr = t.untyped_storage().data_ptr()
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        except RuntimeError:
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def population(k: int, device, rounds: int, member_steps: int, base, tokenizer, out: str):
    """Timings and memory of a population of ``k`` default organisms on fixed batches."""
    import torch

    from physrl.organisms._model import build_model
    from physrl.organisms._population import PopulationGRPO
    from physrl.organisms._stacked import StackedLlama, state_bytes_per_member

    models = [build_model(tokenizer, base.hidden_size, base.n_layers, base.n_heads, seed=i).to(device)
              for i in range(k)]
    stacked = StackedLlama(models)
    del models
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grpo = PopulationGRPO(stacked, grpo_args(base, device, out), tokenizer)
    batches = [member_batch(tokenizer, base, seed=i) for i in range(k)]
    steps = max(3, member_steps // k)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        grpo.step(batches)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    best = fwd = float("inf")
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            grpo.step(batches)
        sync()
        best = min(best, (time.perf_counter() - t0) / steps)
    packed = grpo.pack(batches)
    ids = torch.cat([packed["prompt_ids"], packed["completion_ids"]], 2)
    att = torch.cat([packed["prompt_mask"], packed["completion_mask"]], 2)
    keep = packed["completion_ids"].shape[2]
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            logps, _ = stacked.completion_logps(ids, att, keep, base.temperature)
            logps.sum().backward()
        sync()
        fwd = min(fwd, (time.perf_counter() - t0) / steps)
    with torch.no_grad():
        logps, entropies = stacked.completion_logps(ids, att, keep, base.temperature)
    trl_loss = float("inf")
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            grpo.member_losses(packed, logps, entropies)
        sync()
        trl_loss = min(trl_loss, (time.perf_counter() - t0) / steps)
    grpo.optimizer.zero_grad(set_to_none=True)
    activations = saved_bytes(lambda: grpo.losses(packed))
    peak = torch.cuda.max_memory_allocated() / k if device.type == "cuda" else None
    return {"ms_per_member_step": 1000 * best / k, "step_ms": 1000 * best, "forward_backward_share": fwd / best,
            "trl_loss_ms_per_member": 1000 * trl_loss / k,
            "state_bytes": state_bytes_per_member(stacked), "activation_bytes": activations / k, "cuda_peak": peak,
            "steps": steps}


def trl_alone(device, rounds: int, steps: int, base, tokenizer, out: str) -> float:
    """ms per optimizer step of TRL's GRPOTrainer on one default organism fed a fixed batch (no generation)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from physrl.organisms._model import build_model, use_mask_positions

    batch = member_batch(tokenizer, base, seed=0)
    best = float("inf")
    for r in range(rounds):
        model = build_model(tokenizer, base.hidden_size, base.n_layers, base.n_heads, seed=0).to(device)
        use_mask_positions(model)
        args = grpo_args(base.replace(max_steps=steps + 2), device, os.path.join(out, f"trl{r}"))
        args.save_strategy = "no"
        times = []

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                times.append(time.perf_counter())

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = GRPOTrainer(
                model=model, reward_funcs=[lambda completions, **_: list(batch.rewards)], args=args,
                train_dataset=Dataset.from_dict({"prompt": ["placeholder"] * 64}), processing_class=tokenizer,
                rollout_func=lambda prompts, trainer: {
                    "prompt_ids": batch.prompt_ids, "completion_ids": batch.completion_ids,
                    "logprobs": [[0.0] * len(c) for c in batch.completion_ids], "env_mask": batch.env_mask},
                callbacks=[Clock()])
            trainer.train()
        best = min(best, 1000 * (times[-1] - times[1]) / (len(times) - 2))  # steps after the first two
    return best


def generation_ms(device, rounds: int, repeats: int, base, tokenizer) -> float:
    """ms of one GRPO step's rollouts of one default organism (the organisms' sampler, KV cache, lean path)."""
    import numpy as np

    from physrl.organisms import make_family
    from physrl.organisms._model import build_model
    from physrl.organisms._rollout import make_requests, sample_rollouts

    family = make_family(base)
    model = build_model(tokenizer, base.hidden_size, base.n_layers, base.n_heads, seed=0).to(device)
    envs = [family.train_envs[g % len(family.train_envs)] for g in range(base.groups_per_step)]
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(repeats):
            requests = make_requests(family, envs, base.num_generations, np.random.default_rng(i))
            sample_rollouts(model, tokenizer, family, requests, seed=i, temperature=base.temperature)
        best = min(best, 1000 * (time.perf_counter() - t0) / repeats)
    return best


def generation_batched_ms(k: int, device, rounds: int, base, tokenizer) -> float:
    """ms per member of one GRPO step's rollouts of ``k`` default organisms sampled in one stacked decode."""
    import numpy as np

    from physrl.organisms import make_family
    from physrl.organisms._model import build_model
    from physrl.organisms._rollout import make_requests
    from physrl.organisms._stacked import StackedLlama
    from physrl.organisms._stacked_decode import sample_population_rollouts

    family = make_family(base)
    stacked = StackedLlama([build_model(tokenizer, base.hidden_size, base.n_layers, base.n_heads, seed=i).to(device)
                            for i in range(k)])
    envs = [family.train_envs[g % len(family.train_envs)] for g in range(base.groups_per_step)]
    repeats = max(2, 40 // k)
    best = float("inf")
    for r in range(rounds):
        t0 = time.perf_counter()
        for i in range(repeats):
            requests = [make_requests(family, envs, base.num_generations, np.random.default_rng(1000 * i + j))
                        for j in range(k)]
            sample_population_rollouts(stacked, tokenizer, [family] * k, requests,
                                       [1000 * i + j for j in range(k)], base.temperature)
        best = min(best, 1000 * (time.perf_counter() - t0) / repeats / k)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-k", type=int, default=128, help="largest population size timed (of 1, 8, 32, 128)")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="population sizes (default 1 8 32 128)")
    parser.add_argument("--rounds", type=int, default=2, help="timings of each measurement; the least is kept")
    parser.add_argument("--member-steps", type=int, default=256,
                        help="member-steps per timing (steps = max(3, this // K))")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()

    import torch

    from physrl.organisms import OrganismConfig, build_tokenizer, make_family
    from physrl.organisms._model import pick_device

    device = pick_device(args.device)
    base = OrganismConfig(device=device.type)
    tokenizer = build_tokenizer(make_family(base).words())
    sizes = [k for k in (args.sizes or [1, 8, 32, 128]) if k <= args.max_k]
    print(f"device {device}, torch threads {torch.get_num_threads()}, load {os.getloadavg()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as out:
        trl_ms = trl_alone(device, args.rounds, 40, base, tokenizer, out)
        print(f"TRL GRPOTrainer alone, fixed batch (no generation): {trl_ms:.2f} ms per optimizer step", flush=True)
        gen = generation_ms(device, args.rounds, 20, base, tokenizer)
        print(f"generation of one member's GRPO batch, looped over members: {gen:.2f} ms per member-step "
              "(independent of K)", flush=True)
        batched = {}
        for k in sizes:
            batched[k] = generation_batched_ms(k, device, args.rounds, base, tokenizer)
            print(f"K={k}: generation batched across members: {batched[k]:.2f} ms per member-step "
                  f"({gen / batched[k]:.2f}x the looped sampler)", flush=True)
        for k in sizes:
            r = results[k] = population(k, device, args.rounds, args.member_steps, base, tokenizer, out)
            cuda = f", CUDA peak {r['cuda_peak'] / 2**20:.2f} MiB per member" if r["cuda_peak"] else ""
            print(f"K={k}: update {r['ms_per_member_step']:.2f} ms per member-step ({r['step_ms']:.1f} ms per step, "
                  f"{r['steps']} steps timed; stacked forward+backward {100 * r['forward_backward_share']:.0f}%, TRL's "
                  f"_compute_loss {r['trl_loss_ms_per_member']:.2f} ms per member); "
                  f"memory per member: state {r['state_bytes'] / 2**20:.2f} MiB (params, grads, 2 AdamW moments), "
                  f"saved activations {r['activation_bytes'] / 2**20:.2f} MiB{cuda}", flush=True)
    memory = max((r["state_bytes"] + r["activation_bytes"]) / 2**20 for r in results.values())
    print(f"load after: {os.getloadavg()}")
    print(f"population_speed device={device.type} "
          + ",".join(f"{k}:{r['ms_per_member_step']:.2f}" for k, r in results.items())
          + f" ms_per_member_step trl_alone_ms_per_step={trl_ms:.2f} generation_ms_per_member_step="
          + ",".join(f"{k}:{v:.2f}" for k, v in batched.items())
          + f" generation_looped_ms_per_member_step={gen:.2f} memory_per_member_mb={memory:.2f}")


if __name__ == "__main__":
    main()
