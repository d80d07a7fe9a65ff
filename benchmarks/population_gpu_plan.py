"""A GPU paper plan for population training, from quantities measured here: memory, FLOPs and kernels per member-step.

Issue 20 asks how many members of the default organism one 80 GB GPU holds and how many steps per second it would
run. There is no GPU on the development machine, so this benchmark measures what does not depend on the device and
turns it into a plan under stated assumptions (printed with the plan):

* **memory per member** (measured, at K = 1 and K = ``--k``, to show it is linear in K):
  - state: parameters, gradients and AdamW's two moments of the stacked weights (exact bytes,
    ``organisms._stacked.state_bytes_per_member``);
  - activations autograd saves for the update's backward at one GRPO batch (``groups_per_step * num_generations``
    completions), each storage counted once (``benchmarks.population_speed.saved_bytes``), divided by K;
  - generation: the KV cache and logits of one GRPO batch's decoding (shapes of the measured rollouts).
* **FLOPs per member-step** (``torch.utils.flop_counter.FlopCounterMode``, matmuls and attention): the update
  (stacked forward + backward of one batch, optimizer excluded: element-wise) and the rollouts of one GRPO step
  (``organisms._rollout.sample_rollouts`` on the model given by ``--model-dir``, a stage-1 model, or an untrained one),
  plus the eval passes amortised over ``eval_every`` steps.
* **kernels per member-step** (aten operators dispatched, each one kernel launch on a GPU): of a member's rollouts
  and of TRL's ``_compute_loss`` for one member, the two loops that still run once per member, and of the stacked
  update for the whole population.

Plan: members = usable memory / memory per member; member-steps/s = min(compute bound, launch bound), the compute
bound from the assumed sustained FLOP/s, the launch bound from the per-member kernels times the assumed launch
latency, for two cases: generation and TRL's loss looped over members (the code as it stands) and batched over
members (one call per population step). Last line::

    population_gpu_plan members_80gb=M memory_per_member_mb=m flops_per_member_step=F kernels_per_member_step=k
    compute_bound_member_steps_per_s=C looped_launch_bound_member_steps_per_s=L population_steps_per_s_batched=B
    population_steps_per_s_looped=S

Run: ``OMP_NUM_THREADS=1 python benchmarks/population_gpu_plan.py [--model-dir STAGE1_MODEL]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def count_kernels(fn) -> int:
    """aten operators dispatched while ``fn()`` runs (views and metadata ops included: an upper bound on launches)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def flops(fn) -> int:
    """FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` while ``fn()`` runs (matmuls, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    mode = FlopCounterMode(display=False)
    with mode:
        fn()
    return int(mode.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="a stage-1 model to generate with (default: an untrained built model)")
    parser.add_argument("--k", type=int, default=8, help="second population size measured (default 8)")
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="GPU memory, GB (default 80)")
    parser.add_argument("--usable", type=float, default=0.85,
                        help="share of it for members after the CUDA context, allocator slack (default 0.85)")
    parser.add_argument("--tflops", type=float, default=5.0,
                        help="assumed sustained fp32 TFLOP/s on 64-wide batched matmuls (default 5: ~25%% of an "
                             "A100's 19.5 fp32 peak, ~8%% of an H100 SXM's 67)")
    parser.add_argument("--launch-us", type=float, default=8.0,
                        help="assumed µs per kernel launch of the per-member loops, host-bound (default 8)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from physrl.organisms import OrganismConfig, build_tokenizer, make_family
    from physrl.organisms._model import build_model, load_model, pick_device, use_mask_positions
    from physrl.organisms._population import PopulationGRPO
    from physrl.organisms._rollout import make_requests, sample_rollouts
    from physrl.organisms._stacked import StackedLlama, state_bytes_per_member
    from physrl.organisms._train import _grpo_args
    from population_speed import member_batch, saved_bytes

    torch.set_num_threads(1)
    device = pick_device("auto")
    base = OrganismConfig(device=device.type)
    family = make_family(base)
    if args.model_dir:
        model, tokenizer = load_model(args.model_dir, device)
    else:
        tokenizer = build_tokenizer(family.words())
        model = build_model(tokenizer, base.hidden_size, base.n_layers, base.n_heads, seed=0).to(device)
    use_mask_positions(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"device {device}; default organism: {n_params} parameters, hidden {base.hidden_size}, "
          f"{base.n_layers} layers, vocabulary {len(tokenizer)}; model: {args.model_dir or 'untrained (built)'}")

    # ---- rollouts of one GRPO step (and the eval passes, amortised) -------------------------------------------
    envs = [family.train_envs[g % len(family.train_envs)] for g in range(base.groups_per_step)]
    requests = make_requests(family, envs, base.num_generations, np.random.default_rng(0))
    out = {}

    def generate():
        out.update(sample_rollouts(model, tokenizer, family, requests, seed=0, temperature=base.temperature))

    gen_flops = flops(generate)
    gen_kernels = count_kernels(generate)
    lengths = [len(c) for c in out["completion_ids"]]
    prompt_len = max(len(p) for p in out["prompt_ids"])
    eval_completions = len(family.envs) * base.eval_prompts_per_env * base.num_generations
    eval_share = eval_completions / (base.eval_every * len(requests))  # eval rollouts per train rollout
    kv = 2 * base.n_layers * len(requests) * (prompt_len + max(lengths)) * base.hidden_size * 4
    logits = len(requests) * len(tokenizer) * 4 * 2
    print(f"rollouts of one GRPO step: {len(requests)} completions, mean {np.mean(lengths):.1f} tokens (max "
          f"{max(lengths)}), prompt {prompt_len}; {gen_flops / 1e6:.2f} MFLOP, {gen_kernels} aten ops; KV cache + "
          f"logits {(kv + logits) / 2**20:.3f} MiB; eval passes add {eval_share:.2f}x of it per step "
          f"({eval_completions} completions every {base.eval_every} steps)")

    # ---- the stacked update: memory and FLOPs per member at K = 1 and K = k -----------------------------------
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in (1, args.k):
            stacked = StackedLlama([build_model(tokenizer, base.hidden_size, base.n_layers, base.n_heads,
                                                seed=i).to(device) for i in range(k)])
            grpo = PopulationGRPO(stacked, _grpo_args(base, Path(tmp), device, family), tokenizer)
            batches = [member_batch(tokenizer, base, seed=i) for i in range(k)]
            grpo.step(batches)  # optimizer state exists
            packed = grpo.pack(batches)
            activations = saved_bytes(lambda: grpo.losses(packed))
            update_flops = flops(lambda: torch.stack(grpo.losses(packed)).sum().backward())
            grpo.optimizer.zero_grad(set_to_none=True)
            update_kernels = count_kernels(lambda: grpo.step(batches))
            with torch.no_grad():
                ids = torch.cat([packed["prompt_ids"], packed["completion_ids"]], 2)
                att = torch.cat([packed["prompt_mask"], packed["completion_mask"]], 2)
                logps, ent = stacked.completion_logps(ids, att, packed["completion_ids"].shape[2], base.temperature)
            loss_kernels = count_kernels(lambda: grpo.member_losses(packed, logps, ent))
            rows[k] = {"state": state_bytes_per_member(stacked), "activations": activations / k,
                       "update_flops": update_flops / k, "update_kernels": update_kernels,
                       "loss_kernels_per_member": loss_kernels / k}
            r = rows[k]
            print(f"K={k}: per member state {r['state'] / 2**20:.3f} MiB (params, grads, 2 AdamW moments), saved "
                  f"activations {r['activations'] / 2**20:.3f} MiB; update {r['update_flops'] / 1e6:.1f} MFLOP per "
                  f"member; {update_kernels} aten ops per population step, of which TRL's loss "
                  f"{r['loss_kernels_per_member']:.0f} per member", flush=True)

    # ---- the plan ------------------------------------------------------------------------------------------------
    r = rows[args.k]
    per_member = r["state"] + r["activations"] + kv + logits
    members = int(args.gpu_gb * 1e9 * args.usable // per_member)
    flops_step = r["update_flops"] + gen_flops * (1 + eval_share)
    compute_bound = args.tflops * 1e12 / flops_step
    # the update's launches that grow with K (TRL's loss, advantages and packing per member) and those that do not
    update_per_member = (r["update_kernels"] - rows[1]["update_kernels"]) / (args.k - 1)
    update_fixed = rows[1]["update_kernels"] - update_per_member
    kernels_member = gen_kernels * (1 + eval_share) + update_per_member
    launch_bound = 1e6 / (kernels_member * args.launch_us)
    batched_step_s = (gen_kernels * (1 + eval_share) + update_fixed + update_per_member) * args.launch_us / 1e6
    rate = min(compute_bound, launch_bound)
    print(f"assumptions: {args.gpu_gb:g} GB x {args.usable:g} usable; {args.tflops:g} TFLOP/s sustained fp32; "
          f"{args.launch_us:g} µs per kernel launch in the per-member loops (generation, TRL's loss)")
    print(f"memory: {per_member / 2**20:.2f} MiB per member -> {members} members in {args.gpu_gb:g} GB")
    print(f"compute: {flops_step / 1e6:.1f} MFLOP per member-step (update {r['update_flops'] / 1e6:.1f}, rollouts "
          f"{gen_flops * (1 + eval_share) / 1e6:.1f} incl. eval) -> {compute_bound:,.0f} member-steps/s; a full GPU "
          f"of {members} members: {compute_bound / members:.2f} population steps/s")
    print(f"launches: the update dispatches {update_fixed:.0f} ops per population step plus {update_per_member:.0f} "
          f"per member (TRL's loss {r['loss_kernels_per_member']:.0f}); with generation looped over members, "
          f"{kernels_member:.0f} launches per member-step -> {launch_bound:,.0f} member-steps/s whatever K "
          f"({launch_bound / members:.4f} population steps/s at {members} members). Batched over members (one "
          f"generation and one loss call per population step), ~{batched_step_s * 1e3:.0f} ms of launches per "
          f"population step, under the compute time of {members} members ({members / compute_bound:.2f} s) from "
          f"K ~ {batched_step_s * compute_bound:.0f}")
    print(f"population_gpu_plan members_80gb={members} memory_per_member_mb={per_member / 2**20:.2f} "
          f"flops_per_member_step={flops_step:.3g} kernels_per_member_step={kernels_member:.0f} "
          f"compute_bound_member_steps_per_s={compute_bound:.0f} looped_launch_bound_member_steps_per_s="
          f"{launch_bound:.0f} population_steps_per_s_batched={compute_bound / members:.2f} "
          f"population_steps_per_s_looped={rate / members:.4f}")


if __name__ == "__main__":
    main()
