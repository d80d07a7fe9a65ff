"""A lower bound on a default organism run's wall time, and the largest speed-up over 08702a2 it allows.

Issue 10 asks for a default organism run (N = 4, 600 stage-1 steps, 400 GRPO
steps, one torch thread, stage-1 cache cold) 2x faster than at commit
08702a2, with rollouts identical to that commit's (or equal in distribution).
This benchmark measures the parts of such a run that no change to physrl's
own code removes, and adds them up as a floor:

* **imports** - a fresh interpreter importing the organism trainer and TRL's
  ``GRPOTrainer`` (torch, transformers, TRL, accelerate, datasets), the least
  of ``--repeats`` processes;
* **stage 1** - ``--stage1-steps`` steps of the shipped stage 1
  (:func:`physrl.organisms.pretrain`: demo batch, forward, loss, backward,
  clipping, AdamW; all of it is counted, ~3 ms a step besides forward and
  backward), and of the same loop with three lean forwards of the tiny
  Llama: the same modules and ``scaled_dot_product_attention`` call
  (bit-identical losses, checked); explicit ``softmax(q k^T) v`` attention;
  and that with the last layer's output projection, MLP, norm and head run
  only at the positions a loss reads (~6.5 of 18 a demo; found by a referee
  of this benchmark). The last two are not identical: their loss difference
  is printed, and tiny differences grow over stage 1, so a variant that is
  not identical would need a distribution test before it could ship. The
  fastest, least of ``--rounds`` interleaved timings, times
  ``pretrain_steps``. The share of stage 1 spent in matrix products and
  their achieved GFLOP/s come from ``torch.profiler``;
* **GRPO** - one forward and backward of the policy at GRPO's batch shape
  (``groups_per_step * num_generations`` rollouts of prompt + the longest
  completion, left-padded prompts, position ids from the mask, only the
  completion's logits kept), the model's own forward and the lean one, the
  faster of the two, times ``max_steps``. That is the least a GRPO step does
  (TRL 1.16 with ``beta = 0`` and one iteration per generation runs one
  scoring pass per step); rollout generation, the optimizer, TRL's own
  bookkeeping, the eval passes, rewards and logging count as zero;
* **generation** - the forward passes that sample one GRPO step's rollouts,
  through the KV-cached lean decoder the organisms use
  (:class:`physrl.organisms._decode.CachedDecoder`): the prompts as one
  chunk, then one step per policy token of the shorter (local) path, 3 + L
  tokens; no sampling, no environment, no bookkeeping. Times ``max_steps``.

With ``--baseline DIR`` (a checkout of 08702a2; default ``/work/baseline``
when it exists) one default run of the old code is trained in a fresh process
in the same invocation (``benchmarks/organism_speed.py``'s child), and the
ratio of its wall time to the floor is the largest speed-up any rewrite of
physrl's code could show under the issue's constraints, on one core: the
parts are added up as they run, one after another. (A second process could
overlap the imports of transformers and TRL, ~3.5-4 s, with a stage 1 that
needs only torch, if that stage 1 built the same initial weights without
transformers; not measured. A sweep runs one run per core, so this would not
raise a sweep's throughput.) Last line::

    floor_seconds_per_run=F max_speedup_vs_08702a2=R imports_seconds=I stage1_floor_seconds=S grpo_floor_seconds=G
    generation_floor_seconds=D

Run it on a quiet machine: ``python benchmarks/organism_floor.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

IMPORTS = ("import physrl.organisms._train, physrl.organisms.families.digit_map.stage1, physrl.organisms._decode\n"
           "from trl import GRPOTrainer, GRPOConfig\n")


def imports_seconds(repeats: int) -> float:
    """Least wall time (seconds) of ``repeats`` fresh interpreters importing the trainer and TRL's GRPOTrainer."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return min(times)


def lean_logits(model, ids, att, positions, attention: str, keep: int = 0, used=None):
    """The tiny Llama's logits from its own modules, without the generic forward's machinery.

    ``attention`` ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with the boolean padding
    and causal mask, as transformers' sdpa path calls it (bit-identical results); ``math``: softmax(q k^T /
    sqrt(d) + mask) v. ``keep`` > 0 keeps the last ``keep`` positions' logits only. ``used`` (bool, shape
    (batch, tokens)): the positions whose logits a loss reads; the last layer's output projection, MLP,
    final norm and head then run on those positions only, and the others' logits are 0.
    """
    import torch
    import torch.nn.functional as F
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from physrl.organisms._decode import layer_qkv, padded_causal_mask

    inner = model.model
    b, t = ids.shape
    x = inner.embed_tokens(ids)
    cos, sin = inner.rotary_emb(x, positions)
    mask = padded_causal_mask(att, t)
    if attention == "math":
        additive = torch.zeros(mask.shape, device=ids.device).masked_fill_(~mask, float("-inf"))
    for i, layer in enumerate(inner.layers):
        a = layer.self_attn
        q, k, v = layer_qkv(layer, x, cos, sin, apply_rotary_pos_emb)
        if attention == "math":
            o = torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * a.scaling + additive, dim=-1), v)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=a.scaling)
        o = o.transpose(1, 2).reshape(b, t, -1)
        if used is not None and i == len(inner.layers) - 1:  # only the rows a loss reads go on
            rows = used.reshape(-1).nonzero().squeeze(1)
            x = x.reshape(b * t, -1)[rows] + a.o_proj(o.reshape(b * t, -1)[rows])
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            logits = model.lm_head(inner.norm(x))
            return torch.zeros(b * t, logits.shape[-1], dtype=logits.dtype).index_copy(0, rows, logits).view(b, t, -1)
        x = x + a.o_proj(o)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(inner.norm(x[:, -keep:] if keep else x))


class LeanPolicy:
    """Stands in for the model in :func:`physrl.organisms.pretrain`: the same parameters, a lean forward.

    With ``loss_only``, the last layer runs on the positions stage 1's losses read (the labelled next
    tokens and the path-choice position of the batch :class:`_DemoTokens` drew last; see :func:`stage1`).
    """

    def __init__(self, model, attention: str, loss_only: bool = False):
        self.model, self.attention, self.loss_only = model, attention, loss_only
        self.used = None

    def parameters(self):
        return self.model.parameters()

    def train(self, mode: bool = True):
        return self.model.train(mode)

    def __call__(self, input_ids, attention_mask):
        import torch

        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand_as(input_ids)
        used = self.used if self.loss_only else None
        return SimpleNamespace(logits=lean_logits(self.model, input_ids, attention_mask, positions, self.attention,
                                                  used=used))


def stage1(steps: int, rounds: int):
    """Per-step milliseconds of stage 1 with each forward (least of ``rounds``, interleaved) and the losses."""
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from physrl.organisms import OrganismConfig
    from physrl.organisms.families import make_family
    from physrl.organisms._model import build_model, build_tokenizer
    from physrl.organisms.families.digit_map import stage1 as _pretrain
    from physrl.organisms.families.digit_map.stage1 import pretrain

    base = OrganismConfig()
    config = replace(base, pretrain_steps=steps)
    family = make_family(config)
    tokenizer = build_tokenizer(family.words())
    draw = _pretrain._DemoTokens.batch
    current = {}

    def batch(self, rng, mixture, size):  # the drawn batch, as pretrain draws it, noted for a loss-only policy
        ids, att, lab, choice_at = draw(self, rng, mixture, size)
        policy = current.get("policy")
        if isinstance(policy, LeanPolicy) and policy.loss_only:
            used = np.zeros(lab.shape, dtype=bool)
            used[:, :-1] = lab[:, 1:] != -100  # logits at t predict the labelled token t + 1
            used[np.arange(len(choice_at)), choice_at] = True  # the path choice's soft target
            policy.used = torch.from_numpy(used)
        return ids, att, lab, choice_at

    out = {}
    _pretrain._DemoTokens.batch = batch
    try:
        for _ in range(rounds):  # variants interleaved, the least time of each kept
            for name in ("shipped", "lean-sdpa", "lean-math", "lean-math-loss-only"):
                model = build_model(tokenizer, config.hidden_size, config.n_layers, config.n_heads, seed=config.seed)
                policy = model if name == "shipped" else LeanPolicy(model, name.split("-")[1], name.endswith("only"))
                current["policy"] = policy
                t0 = time.perf_counter()
                losses = pretrain(policy, tokenizer, config, family)
                ms = 1000 * (time.perf_counter() - t0) / steps
                out[name] = {"ms": min(ms, out.get(name, {}).get("ms", ms)), "losses": losses}
    finally:
        _pretrain._DemoTokens.batch = draw
    model = build_model(tokenizer, config.hidden_size, config.n_layers, config.n_heads, seed=config.seed)
    short = replace(config, pretrain_steps=20)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        pretrain(model, tokenizer, short, family)
        seconds = time.perf_counter() - t0
    mm = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    # matrix-product FLOPs of one step: forward 2 * tokens * (projection + head weights), backward twice that
    n_tokens = config.pretrain_batch_size * 18  # 18: the longest demo (RS path) at the default input length
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("proj.weight")) + \
        model.lm_head.weight.numel()
    flops = 3 * 2 * n_tokens * weights * short.pretrain_steps
    return out, {"mm_share": mm / total, "gflops": flops / (mm * 1e-6) / 1e9, "profiled_seconds": seconds,
                 "pretrain_steps": base.pretrain_steps}


def policy_batch():
    """The default organism's freshly built policy and one GRPO batch of token ids (random, GRPO's shape).

    Returns ``(config, model, ids, att, prompt)``: ``ids``/``att`` of shape
    (``groups_per_step * num_generations``, prompt + the longest completion),
    half the prompts one token shorter and left-padded as GRPO pads them;
    ``prompt`` the prompt width.
    """
    import torch

    from physrl.organisms import OrganismConfig
    from physrl.organisms.families import make_family
    from physrl.organisms._model import build_model, build_tokenizer

    config = OrganismConfig()
    tokenizer = build_tokenizer(make_family(config).words())
    model = build_model(tokenizer, config.hidden_size, config.n_layers, config.n_heads, seed=config.seed)
    batch = config.groups_per_step * config.num_generations
    prompt = 3 + config.input_length
    completion = 5 + config.input_length + round(config.note_reveal * config.input_length)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tokenizer), (batch, prompt + completion), generator=g)
    att = torch.ones_like(ids)
    att[: batch // 2, :1] = 0
    return config, model, ids, att, prompt


def grpo(steps: int):
    """Milliseconds of one forward + backward at GRPO's batch shape: the model's own forward and the lean one."""
    import torch

    config, model, ids, att, prompt = policy_batch()
    positions = (att.cumsum(-1) - 1).clamp(min=0)
    keep = ids.shape[1] - prompt + 1

    def own():
        return model(input_ids=ids, attention_mask=att, position_ids=positions, logits_to_keep=keep).logits

    def lean():
        return lean_logits(model, ids, att, positions, "sdpa", keep)

    out = {}
    for name, fn in (("own", own), ("lean", lean)) * 2:
        t0 = time.perf_counter()
        for _ in range(steps):
            model.zero_grad(set_to_none=True)
            torch.log_softmax(fn().float(), -1).mean().backward()
        out[name] = min(out.get(name, float("inf")), 1000 * (time.perf_counter() - t0) / steps)
    same = torch.equal(own()[att[:, -keep:].bool()], lean()[att[:, -keep:].bool()])
    return out, {"batch": ids.shape[0], "width": ids.shape[1], "identical": same, "max_steps": config.max_steps}


def generation(repeats: int) -> float:
    """Milliseconds of the KV-cached decoder's forward passes for one GRPO batch: the prompts, then one step
    per policy token of the local path (3 + L), least of two rounds of ``repeats``."""
    import torch

    from physrl.organisms._decode import CachedDecoder

    config, model, ids, att, prompt = policy_batch()
    model.eval()
    best = float("inf")
    with torch.no_grad():
        for _ in range(2):
            t0 = time.perf_counter()
            for _ in range(repeats):
                decoder = CachedDecoder(model)
                mask = att[:, :prompt]
                logits = decoder.step(ids[:, :prompt], mask, (mask.cumsum(-1) - 1).clamp(min=0))
                for _ in range(3 + config.input_length):
                    token = logits.argmax(-1, keepdim=True)
                    mask = torch.cat([mask, torch.ones_like(token)], dim=1)
                    logits = decoder.step(token, mask, mask.sum(-1, keepdim=True) - 1)
            best = min(best, 1000 * (time.perf_counter() - t0) / repeats)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, default=Path("/work/baseline"),
                        help="checkout of commit 08702a2 (old layout); skipped when absent")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--repeats", type=int, default=5, help="fresh interpreters timed for the imports")
    parser.add_argument("--stage1-steps", type=int, default=100)
    parser.add_argument("--grpo-steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timings of each stage-1 variant")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    print(f"load before: {os.getloadavg()}")
    imports = imports_seconds(args.repeats)
    print(f"imports (fresh interpreter, trainer + GRPOTrainer; least of {args.repeats}): {imports:.2f} s", flush=True)
    s1, prof = stage1(args.stage1_steps, args.rounds)
    ref = s1["shipped"]["losses"]
    for name, r in s1.items():
        diff = max(abs(a - b) for a, b in zip(ref, r["losses"]))
        print(f"stage 1, {name:19s}: {r['ms']:6.2f} ms/step; losses identical to shipped: {r['losses'] == ref} "
              f"(largest difference {diff:.2e} over {args.stage1_steps} steps)", flush=True)
    print(f"stage 1, shipped: matrix products {prof['mm_share']:.0%} of the profiled CPU time, at "
          f"{prof['gflops']:.0f} GFLOP/s")
    g, info = grpo(args.grpo_steps)
    print(f"GRPO scoring pass, {info['batch']} rollouts x {info['width']} tokens: forward + backward "
          f"{g['own']:.2f} ms (model's forward), {g['lean']:.2f} ms (lean; logits identical: {info['identical']})",
          flush=True)
    generation_ms = generation(args.grpo_steps)
    print(f"generation, {info['batch']} rollouts: decoder forward passes {generation_ms:.2f} ms per GRPO step")
    stage1_floor = min(r["ms"] for r in s1.values()) * prof["pretrain_steps"] / 1000
    grpo_floor = min(g.values()) * info["max_steps"] / 1000
    generation_floor = generation_ms * info["max_steps"] / 1000
    floor = imports + stage1_floor + grpo_floor + generation_floor
    extra = ""
    baseline = not args.no_baseline and (args.baseline / "organisms" / "_train.py").exists()
    if baseline:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from organism_speed import run_child

        speed_args = SimpleNamespace(max_steps=info["max_steps"], pretrain_steps=prof["pretrain_steps"],
                                     baseline=args.baseline)
        with tempfile.TemporaryDirectory() as tmp:
            old = run_child("old", Path(tmp) / "old" / "run", speed_args)["process_wall"]
        print(f"08702a2 default run: {old:.1f} s wall; a 2x goal is {old / 2:.1f} s")
        extra = f" max_speedup_vs_08702a2={old / floor:.2f}"
    print(f"load after: {os.getloadavg()}")
    print(f"floor_seconds_per_run={floor:.1f}{extra} imports_seconds={imports:.1f} "
          f"stage1_floor_seconds={stage1_floor:.1f} grpo_floor_seconds={grpo_floor:.1f} "
          f"generation_floor_seconds={generation_floor:.1f}")


if __name__ == "__main__":
    main()
