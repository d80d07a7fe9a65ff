"""Same science, solo against population (issue 20, item 3): paired seeds, TRL's trainer vs the population trainer.

Every seed s in the config's ``[equivalence].seeds`` is trained twice with one
:class:`~physrl.organisms.OrganismConfig` (the config's ``[organisms]`` table,
``seed = s``), identical but for ``trainer``:

* **solo** - ``trainer = "trl"``: :func:`physrl.organisms.train`, TRL's
  ``GRPOTrainer``, one run per process call, into ``OUT/solo/seed-SS``;
* **member** - ``trainer = "population"``: :func:`physrl.organisms.train_population`,
  seeds in order ``population_size`` at a time, into ``OUT/member/seed-SS``.

The unit of replication is the stage-1 model: each seed has its own (the seed
enters the stage-1 key), and seed s's solo run and member share that one
model through one stage-1 cache (``OUT/.stage1_cache``), so a pair differs only
by the trainer. The step-0 eval pass of a pair is therefore the same pass.

Per run (from its eval rollouts on trained environments, ``phase == "eval"``):

* **step-0 knobs** - RS share p, RS skill a, local skill b at the step-0 eval;
* **final RS share** - the mean of the RS shares of the last ``final_evals``
  eval passes (steps 360, 380, 400 at the committed config);
* **takeover step** - the first eval step whose RS share > ``takeover_share``;
  a run that never crosses is censored at ``max_steps`` (its value is
  ``max_steps``), and the number censored is reported per arm.

Analysis (``analyse``): paired differences member - solo per seed; their mean
with a paired bootstrap 95% interval over seeds (``bootstrap`` resamples,
``bootstrap_seed``); the Wilcoxon signed-rank test of the paired differences and
the two-sample Kolmogorov-Smirnov and Mann-Whitney tests of the two arms'
distributions (``scipy.stats``); the issue's goal: the final-share interval
holds 0 and lies within +-``goal_half_width``. Writes ``per_seed.csv``,
``summary.json`` and ``solo_vs_member.png`` into ``--write``.

``diagnose`` answers why a pair's trajectories part at all (same seed, same
stage-1 model): it records the solo run's batches (TRL's ``rollout_func``
output and rewards) and weights at every step, then replays those batches
through the population trainer (``PopulationGRPO``, teacher-forced) from the
same stage-1 model and compares weights step by step, against a control replay
from stage-1 weights nudged by 2e-7; it checks the population gradient against
TRL's ``_compute_loss`` at every step (also ``gradcheck`` on a saved record);
and it finds the first (step, row) where the free-running member's rollouts
differ from the solo run's and the probability margin of the token that
differs. ``control`` replays a saved record against itself with rounding-sized
gradient noise at every update. Results go to ``OUT/diagnose/seed-SS/diagnose.json``.

Run (``OMP_NUM_THREADS=1``; a long run belongs in the background)::

    python benchmarks/population_equivalence.py run solo --out /work/runs_equiv
    python benchmarks/population_equivalence.py run member --out /work/runs_equiv
    python benchmarks/population_equivalence.py diagnose --out /work/runs_equiv --seed 0
    python benchmarks/population_equivalence.py analyse --out /work/runs_equiv \\
        --write data/reference/population-equivalence

``--config`` defaults to ``data/reference/population-equivalence/config.toml``;
``--seeds`` (e.g. ``0-7`` or ``3,5``) runs a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE.parent / "data" / "reference" / "population-equivalence" / "config.toml"


def load(path: Path) -> tuple[dict, dict]:
    """(the ``[organisms]`` fields, the ``[equivalence]`` settings) of the config file."""
    data = tomllib.loads(Path(path).read_text())
    return data["organisms"], data["equivalence"]


def parse_seeds(text: str | None, default: list[int]) -> list[int]:
    if not text:
        return list(default)
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def run_config(fields: dict, seed: int, trainer: str, out: Path):
    from physrl.organisms import OrganismConfig

    return OrganismConfig(**{**fields, "seed": seed, "trainer": trainer,
                             "stage1_cache": str(out / ".stage1_cache")})


def run_dir(out: Path, arm: str, seed: int) -> Path:
    return out / arm / f"seed-{seed:02d}"


def _status(d: Path) -> str | None:
    m = d / "manifest.json"
    return json.loads(m.read_text()).get("status") if m.is_file() else None


def cmd_run(args) -> None:
    """Train the solo runs one after another, or the members population by population (resuming what a kill left)."""
    import torch

    from physrl.organisms import train, train_population

    torch.set_num_threads(1)
    fields, eq = load(args.config)
    seeds = parse_seeds(args.seeds, eq["seeds"])
    out = Path(args.out)
    if args.arm == "solo":
        from physrl.organisms._lock import RunInUse

        for s in (reversed(seeds) if args.reverse else seeds):
            d = run_dir(out, "solo", s)
            if _status(d) == "finished":
                continue
            t0, c0 = time.time(), time.process_time()
            try:
                train(run_config(fields, s, "trl", out), d, resume=_status(d) is not None, log=lambda *a: None)
            except RunInUse:  # a second solo process (--reverse) trains it
                continue
            print(f"solo seed {s}: wall {time.time() - t0:.1f} s cpu {time.process_time() - c0:.1f} s", flush=True)
        return
    k = args.size or eq["population_size"]
    chunks = [seeds[i:i + k] for i in range(0, len(seeds), k)]
    for chunk in (reversed(chunks) if args.reverse else chunks):
        dirs = [run_dir(out, "member", s) for s in chunk]
        if all(_status(d) == "finished" for d in dirs):
            continue
        t0, c0 = time.time(), time.process_time()
        train_population([run_config(fields, s, "population", out) for s in chunk], dirs,
                         resume=any(_status(d) is not None for d in dirs), log=lambda *a: None)
        print(f"population {chunk}: wall {time.time() - t0:.1f} s cpu {time.process_time() - c0:.1f} s "
              f"({(time.process_time() - c0) / len(chunk):.1f} s per member)", flush=True)


def _snapshot(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _rel(a: dict, b: dict) -> float:
    """Relative L2 distance of two weight sets (over the names both hold): ||a - b|| / ||b||."""
    import torch

    names = [n for n in a if n in b]
    num = torch.sqrt(sum(((a[n].double() - b[n].double()) ** 2).sum() for n in names))
    den = torch.sqrt(sum((b[n].double() ** 2).sum() for n in names))
    return float(num / den)


def record_solo(config, out_dir: Path):
    """Train ``config`` solo (TRL) into ``out_dir``, recording every step's batch and the weights after every update.

    Returns ``(batches, weights)``: ``batches[t]`` the :class:`MemberBatch` TRL trained update t + 1 on (the
    ``rollout_func`` output and the rewards the reward function returned), ``weights[t]`` the weights after t
    updates (``weights[0]``: the stage-1 model).
    """
    from transformers import TrainerCallback

    from physrl.organisms import train
    from physrl.organisms._population import MemberBatch

    batches, weights, pending = [], [], {}

    class Snap(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            weights.append(_snapshot(model))

        def on_step_end(self, args, state, control, model=None, **kw):
            weights.append(_snapshot(model))

    def hook(recorder, trainer):
        inner = trainer.rollout_func
        add = recorder.writer.add

        def rollout_func(prompts, tr):
            out = inner(prompts, tr)
            pending.update(prompt_ids=[list(r) for r in out["prompt_ids"]],
                           completion_ids=[list(r) for r in out["completion_ids"]],
                           env_mask=[list(r) for r in out["env_mask"]])
            return out

        def writer_add(**row):
            if row.get("phase") == "train":
                batches.append(MemberBatch(pending["prompt_ids"], pending["completion_ids"],
                                           [float(r) for r in row["reward"]], pending["env_mask"]))
            return add(**row)

        trainer.rollout_func = rollout_func
        recorder.writer.add = writer_add
        trainer.add_callback(Snap())

    train(config, out_dir, recorder_hook=hook, log=lambda *a: None)
    return batches, weights


def replay(config, run_dir: Path, batches, k: int = 1, perturb: float = 0.0, perturb_seed: int = 0,
           grad_noise: float = 0.0):
    """The population trainer fed the solo run's batches (teacher-forced), from its stage-1 model, K copies.

    ``perturb`` > 0 multiplies every stage-1 weight by ``1 + perturb * N(0, 1)`` first (a rounding-sized nudge, the
    control for how much the teacher-forced dynamics amplify one); ``grad_noise`` > 0 multiplies every gradient
    element by ``1 + grad_noise * N(0, 1)`` at every step before clipping (a rounding-sized difference injected
    at every update, as the solo and population gradients differ). Returns the list of member 0's weights after t
    updates (t = 0 .. len(batches)), and the largest relative distance between member 0 and the other copies at
    the end."""
    import torch

    from physrl.organisms._model import load_model, pick_device, use_mask_positions
    from physrl.organisms._population import PopulationGRPO
    from physrl.organisms._stacked import StackedLlama
    from physrl.organisms._train import _grpo_args, check_setup

    device = pick_device(config.device)
    model, tokenizer = load_model(run_dir / "model_init", device)
    use_mask_positions(model)
    if perturb:
        g = torch.Generator().manual_seed(perturb_seed)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + perturb * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
    stacked = StackedLlama([model] * k)
    grpo = PopulationGRPO(stacked, _grpo_args(config, run_dir / "replay", device, check_setup(config)), tokenizer)
    out = [{n: p[0].detach().clone() for n, p in stacked.params.items()}]
    noise = torch.Generator().manual_seed(perturb_seed + 1)
    for b in batches:
        if grad_noise:
            grpo.backward([b] * k)
            for p in stacked.parameters():
                p.grad.mul_(1 + grad_noise * torch.randn(p.shape, generator=noise, dtype=p.dtype).to(p.device))
            grpo.clip_gradients()
            grpo.optimizer.step()
            grpo.scheduler.step()
            grpo.optimizer.zero_grad(set_to_none=True)
        else:
            grpo.step([b] * k)
        out.append({n: p[0].detach().clone() for n, p in stacked.params.items()})
    spread = max((_rel({n: p[j] for n, p in stacked.params.items()}, out[-1]) for j in range(1, k)), default=0.0)
    return out, spread


def first_difference(solo_dir: Path, member_dir: Path):
    """The first train/eval row (in step, phase, row order) where the member's rollouts differ from the solo run's:
    ``(step, phase, row index within the step, solo completion, member completion)`` or None."""
    from physrl.contract import read_rollouts

    a, b = read_rollouts(solo_dir), read_rollouts(member_dir)
    for step in sorted(set(a.step) | set(b.step)):
        for phase in ("eval", "train"):  # at a step the eval pass (weights after `step` updates) comes first
            x = a[(a.step == step) & (a.phase == phase)].completion.tolist()
            y = b[(b.step == step) & (b.phase == phase)].completion.tolist()
            for i, (u, v) in enumerate(zip(x, y)):
                if u != v:
                    return step, phase, i, u, v
            if len(x) != len(y):
                return step, phase, min(len(x), len(y)), None, None
    return None


def token_margin(config, weights_a: dict, weights_b: dict, run_dir: Path, prefix_ids: list[int]):
    """Next-token distributions of two weight sets after ``prefix_ids``: (max |p_a - p_b|, p_a, p_b) as numpy."""
    import torch

    from physrl.organisms._model import load_model, pick_device, use_mask_positions

    device = pick_device(config.device)
    probs = []
    for w in (weights_a, weights_b):
        model, _ = load_model(run_dir / "model_init", device)
        use_mask_positions(model)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in w:
                    p.copy_(w[n])
            logits = model(torch.tensor([prefix_ids], device=device)).logits[0, -1].double()
        probs.append(torch.softmax(logits / config.temperature, -1).cpu().numpy())
    return float(abs(probs[0] - probs[1]).max()), probs[0], probs[1]


def _resample(config, run_dir: Path, weights: dict, step: int, phase: str = "train"):
    """(prompt ids, completion ids) a run samples at ``step`` from ``weights`` (same seeds): the ``rollout_func``'s batch
    (``phase = "train"``) or the eval pass's (``"eval"``, as :func:`organisms._train.evaluate` samples it)."""
    from types import SimpleNamespace

    import torch

    from physrl.organisms._model import load_model, pick_device, use_mask_positions
    from physrl.organisms._train import check_setup, make_rollout_func

    model, tokenizer = load_model(run_dir / "model_init", pick_device(config.device))
    use_mask_positions(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in weights:
                p.copy_(weights[n])
    stub = SimpleNamespace(state=SimpleNamespace(global_step=step), model=model,
                           accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    family = check_setup(config)
    if phase == "eval":
        import numpy as np

        from physrl.organisms._rollout import PHASE_CODE, make_requests, sample_rollouts, stream_seed

        rng = np.random.default_rng(stream_seed(config.seed, step, PHASE_CODE["eval"]))
        envs = [e for e in family.envs for _ in range(config.eval_prompts_per_env)]
        requests = make_requests(family, envs, config.num_generations, rng)
        out = sample_rollouts(model, tokenizer, family, requests,
                              stream_seed(config.seed, step, PHASE_CODE["eval"], 1), config.temperature)
        return [list(r) for r in out["prompt_ids"]], [list(r) for r in out["completion_ids"]]
    fn = make_rollout_func(config, family, tokenizer)
    out = fn([None] * (config.groups_per_step * config.num_generations), stub)
    return [list(r) for r in out["prompt_ids"]], [list(r) for r in out["completion_ids"]]


def gradient_check(config, run_dir: Path, batches, weights) -> list[float]:
    """Per step t: the relative L2 difference between the population trainer's gradient and TRL's own
    (``GRPOTrainer._compute_loss`` on transformers' model, TRL's scoring pass) for the solo run's batch t at the
    solo run's weights after t updates; no clipping, no optimizer (the update's inputs, not its outputs). A step whose
    advantages are all 0 gives 0 when both gradients are exactly 0 (inf otherwise)."""
    import warnings

    import torch

    from physrl.organisms._model import load_model, pick_device, use_mask_positions
    from physrl.organisms._population import PopulationGRPO
    from physrl.organisms._stacked import StackedLlama
    from physrl.organisms._train import _grpo_args, check_setup

    device = pick_device(config.device)
    model, tokenizer = load_model(run_dir / "model_init", device)
    use_mask_positions(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stacked = StackedLlama([model])
        grpo = PopulationGRPO(stacked, _grpo_args(config, run_dir / "gradcheck", device, check_setup(config)),
                              tokenizer)
    reference = grpo.trl.model  # TRL's own copy of the model (its fused LM head)
    reference.train()
    out = []
    for t, b in enumerate(batches):
        with torch.no_grad():
            for n, p in stacked.params.items():
                p[0].copy_(weights[t][n])
            for n, p in reference.named_parameters():
                p.copy_(weights[t][n])
        grpo.backward([b])
        packed = grpo.pack([b])
        inputs = {k: packed[k][0] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask",
                                            "tool_mask", "advantages")}
        inputs["num_items_in_batch"] = (inputs["completion_mask"] * inputs["tool_mask"]).sum()
        reference.zero_grad(set_to_none=True)
        grpo.trl._compute_loss(reference, inputs).backward()
        ref = {n: p.grad for n, p in reference.named_parameters() if n in stacked.params}
        mine = {n: stacked.params[n].grad[0] for n in ref}
        if all(float(g.abs().max()) == 0 for g in ref.values()):  # every advantage 0: both gradients must be 0
            out.append(0.0 if all(float(g.abs().max()) == 0 for g in mine.values()) else float("inf"))
        else:
            out.append(_rel(mine, ref))
    return out


def cmd_diagnose(args) -> None:
    """Why do a solo run and a member of the same seed part? (module docstring, ``diagnose``)."""
    import shutil

    import numpy as np
    import torch

    from physrl.organisms import train

    torch.set_num_threads(1)
    fields, eq = load(args.config)
    out = Path(args.out) / "diagnose" / f"seed-{args.seed:02d}"
    if out.exists():
        shutil.rmtree(out)
    solo_cfg = run_config(fields, args.seed, "trl", Path(args.out))
    if args.steps:
        solo_cfg = solo_cfg.replace(max_steps=args.steps)
    t0 = time.time()
    batches, weights = record_solo(solo_cfg, out / "solo")
    print(f"solo recorded: {len(batches)} batches in {time.time() - t0:.0f} s", flush=True)
    result = {"seed": args.seed, "steps": len(batches)}
    for k in (1, args.k) if args.k > 1 else (1,):
        t0 = time.time()
        replayed, spread = replay(solo_cfg, out / "solo", batches, k)
        rel = [_rel(r, w) for r, w in zip(replayed, weights)]
        at = [1, 2, 5, 10, 50, 100, 200, len(rel) - 1]
        line = " ".join(f"{t}:{rel[t]:.1e}" for t in at if t < len(rel))
        print(f"teacher-forced replay K={k} ({time.time() - t0:.0f} s): relative weight distance to solo after t "
              f"updates {line}; max over t {max(rel):.2e}; copies within the population differ by {spread:.1e}",
              flush=True)
        result[f"replay_k{k}"] = {"relative_distance": rel, "max": max(rel), "copies_spread": spread}
    torch.save({"batches": [b.__dict__ for b in batches], "weights": weights}, out / "solo_record.pt")
    t0 = time.time()
    grads = gradient_check(solo_cfg, out / "solo", batches, weights)
    worst = int(max(range(len(grads)), key=grads.__getitem__))
    print(f"gradient check ({time.time() - t0:.0f} s): population vs TRL's _compute_loss on the solo run's batch and "
          f"weights at every step: median {float(np.median(grads)):.1e}, worst {grads[worst]:.1e} (step {worst})",
          flush=True)
    result["gradient_relative_difference"] = {"per_step": grads, "median": float(np.median(grads)),
                                              "max": grads[worst], "worst_step": worst}
    # control: the same teacher-forced replay from stage-1 weights nudged by a rounding-sized relative 2e-7:
    # how far do the dynamics alone carry a difference of that size?
    base, _ = replay(solo_cfg, out / "solo", batches, 1)
    nudged, _ = replay(solo_cfg, out / "solo", batches, 1, perturb=2e-7)
    ctl = [_rel(x, y) for x, y in zip(nudged, base)]
    line = " ".join(f"{t}:{ctl[t]:.1e}" for t in at if t < len(ctl))
    print(f"control, population replay vs itself from stage-1 weights x (1 + 2e-7 N(0,1)): {line}", flush=True)
    result["control_nudged_2e-7"] = {"relative_distance": ctl, "max": max(ctl)}
    # the free-running member (a population of one) against the solo run: where do their rows part?
    member_cfg = solo_cfg.replace(trainer="population")
    train(member_cfg, out / "member", log=lambda *a: None)
    diff = first_difference(out / "solo", out / "member")
    if diff is None:
        print("member (population of one) equals the solo run row for row", flush=True)
        result["first_difference"] = None
    else:
        step, phase, row, u, v = diff
        result["first_difference"] = {"step": int(step), "phase": phase, "row": int(row), "solo": u, "member": v}
        print(f"first differing rollout: step {step} {phase} row {row}: solo {u!r} member {v!r}", flush=True)
        if u is not None:
            # that row's prompt and the shared completion prefix, scored by both weight sets (after `step` updates;
            # the member's equal the teacher-forced replay's there: every batch before was the same)
            replayed, _ = replay(solo_cfg, out / "solo", batches[:step], 1)
            prompts, member = _resample(solo_cfg, out / "solo", replayed[step], step, phase)
            _, solo = _resample(solo_cfg, out / "solo", weights[step], step, phase)
            member_ids, solo_ids = member[row], solo[row]
            from physrl.organisms._model import load_model
            from physrl.organisms._rollout import decode

            _, tok = load_model(out / "solo" / "model_init", torch.device("cpu"))
            result["first_difference"]["replay_reproduces_member"] = decode(tok, [member_ids])[0] == v
            j = next((i for i, (x, y) in enumerate(zip(solo_ids, member_ids)) if x != y),
                     min(len(solo_ids), len(member_ids)))
            prefix = list(prompts[row]) + list(solo_ids[:j])
            dp, pa, pb = token_margin(solo_cfg, weights[step], replayed[step], out / "solo", prefix)
            ts = solo_ids[j] if j < len(solo_ids) else None
            tm = member_ids[j] if j < len(member_ids) else None
            info = {"position": j, "max_abs_dprob": dp, "solo_token": tok.convert_ids_to_tokens(ts) if ts is not None
                    else None, "member_token": tok.convert_ids_to_tokens(tm) if tm is not None else None,
                    "p_solo_token": [float(pa[ts]), float(pb[ts])] if ts is not None else None,
                    "p_member_token": [float(pa[tm]), float(pb[tm])] if tm is not None else None,
                    "weights_relative_distance": _rel(replayed[step], weights[step])}
            result["first_difference"].update(info)
            print(f"  at completion position {j}: solo drew {info['solo_token']!r}, member {info['member_token']!r}; "
                  f"next-token probabilities of the two weight sets differ by at most {dp:.1e} (weights "
                  f"{info['weights_relative_distance']:.1e} apart)", flush=True)
    (out / "diagnose.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out / 'diagnose.json'}")


def cmd_gradcheck(args) -> None:
    """:func:`gradient_check` on the record a ``diagnose`` run saved (``OUT/diagnose/seed-SS/solo_record.pt``)."""
    import numpy as np
    import torch

    from physrl.organisms._population import MemberBatch

    torch.set_num_threads(1)
    fields, _ = load(args.config)
    folder = Path(args.out) / "diagnose" / f"seed-{args.seed:02d}"
    record = torch.load(folder / "solo_record.pt", weights_only=False)
    config = run_config(fields, args.seed, "trl", Path(args.out)).replace(max_steps=len(record["batches"]))
    grads = gradient_check(config, folder / "solo", [MemberBatch(**b) for b in record["batches"]], record["weights"])
    worst = int(max(range(len(grads)), key=grads.__getitem__))
    print(f"gradient check seed {args.seed}: population vs TRL's _compute_loss at every one of {len(grads)} steps: "
          f"median {float(np.median(grads)):.1e}, worst {grads[worst]:.1e} (step {worst})")
    path = folder / "diagnose.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result["gradient_relative_difference"] = {"per_step": grads, "median": float(np.median(grads)),
                                              "max": grads[worst], "worst_step": worst}
    path.write_text(json.dumps(result, indent=1, default=str))


def cmd_control(args) -> None:
    """The replay of a diagnosed solo run's batches against itself with ``--noise`` gradient noise at every step."""
    import torch

    from physrl.organisms._population import MemberBatch

    torch.set_num_threads(1)
    fields, _ = load(args.config)
    folder = Path(args.out) / "diagnose" / f"seed-{args.seed:02d}"
    record = torch.load(folder / "solo_record.pt", weights_only=False)
    batches = [MemberBatch(**b) for b in record["batches"]]
    config = run_config(fields, args.seed, "trl", Path(args.out)).replace(max_steps=len(batches))
    base, _ = replay(config, folder / "solo", batches, 1)
    noisy, _ = replay(config, folder / "solo", batches, 1, grad_noise=args.noise)
    ctl = [_rel(x, y) for x, y in zip(noisy, base)]
    at = [1, 2, 5, 10, 50, 100, 200, len(ctl) - 1]
    print(f"control seed {args.seed}, replay vs itself with gradient noise {args.noise:g} per step: "
          + " ".join(f"{t}:{ctl[t]:.1e}" for t in at if t < len(ctl)))
    path = folder / "diagnose.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result[f"control_gradient_noise_{args.noise:g}"] = {"relative_distance": ctl, "max": max(ctl)}
    path.write_text(json.dumps(result, indent=1, default=str))


# ---- analysis -----------------------------------------------------------------------------------------------------
def run_outcome(d: Path, final_evals: int, takeover_share: float, max_steps: int) -> dict:
    """One run's step-0 knobs (p, a, b on trained envs), RS-share trajectory, final RS share and takeover step."""

    from physrl.contract import read_manifest, read_rollouts

    manifest = read_manifest(d)
    if manifest.status != "finished":
        raise ValueError(f"{d}: status {manifest.status!r}, not finished")
    trained = {e.env_id for e in manifest.environments if e.w > 0}
    df = read_rollouts(d)
    ev = df[(df.phase == "eval") & df.env_id.isin(trained)]
    share = ev.groupby("step").rs.mean().sort_index()
    at0 = ev[ev.step == 0]
    rs0 = at0.rs.astype(bool)
    crossed = share[share > takeover_share]
    return {"p": float(rs0.mean()), "a": float(at0.reward[rs0].mean()) if rs0.any() else float("nan"),
            "b": float(at0.reward[~rs0].mean()) if (~rs0).any() else float("nan"),
            "final": float(share.iloc[-final_evals:].mean()), "final_steps": [int(x) for x in share.index[-final_evals:]],
            "takeover": float(crossed.index[0]) if len(crossed) else float(max_steps), "censored": not len(crossed),
            "trajectory": share, "trainer": ((manifest.organisms or {}).get("trainer") or {}).get("name", "trl"),
            "run_id": manifest.run_id}


def paired_summary(solo, member, n_boot: int, seed: int) -> dict:
    """Mean of each arm, the paired difference member - solo with a percentile bootstrap 95% interval over seeds
    (``scipy.stats.bootstrap``, ``paired`` resampling of the seeds), its SD, the Wilcoxon signed-rank test of the
    differences (Pratt's zeros), the sign test, and two-sample KS and Mann-Whitney tests of the arms' distributions."""
    import numpy as np
    from scipy import stats

    solo, member = np.asarray(solo, float), np.asarray(member, float)
    diff = member - solo
    boot = stats.bootstrap((diff,), np.mean, n_resamples=n_boot, method="percentile",
                           random_state=np.random.default_rng(seed))
    nonzero = diff[diff != 0]
    out = {"n": int(len(diff)), "mean_solo": float(solo.mean()), "mean_member": float(member.mean()),
           "sd_solo": float(solo.std(ddof=1)), "sd_member": float(member.std(ddof=1)),
           "mean_difference": float(diff.mean()), "ci95": [float(boot.confidence_interval.low),
                                                           float(boot.confidence_interval.high)],
           "sd_difference": float(diff.std(ddof=1)), "pairs_equal": int((diff == 0).sum()),
           "member_higher": int((diff > 0).sum()), "member_lower": int((diff < 0).sum()),
           "sign_test_p": float(stats.binomtest(int((nonzero > 0).sum()), len(nonzero)).pvalue) if len(nonzero) else 1.0,
           "wilcoxon_p": float(stats.wilcoxon(diff, zero_method="pratt").pvalue) if len(nonzero) else 1.0,
           "ks_p": float(stats.ks_2samp(solo, member).pvalue),
           "mannwhitney_p": float(stats.mannwhitneyu(solo, member).pvalue)}
    out["ci95_half_width"] = (out["ci95"][1] - out["ci95"][0]) / 2
    return out


def cmd_analyse(args) -> None:
    """Per-seed outcomes of both arms, paired differences with intervals, tests, table and figure (module docstring)."""
    import numpy as np
    import pandas as pd

    fields, eq = load(args.config)
    out = Path(args.out)
    max_steps = fields["max_steps"]
    seeds = parse_seeds(args.seeds, eq["seeds"])
    rows, trajectories = [], {}
    for s in seeds:
        pair = {}
        for arm in ("solo", "member"):
            d = run_dir(out, arm, s)
            try:
                pair[arm] = run_outcome(d, eq["final_evals"], eq["takeover_share"], max_steps)
            except (ValueError, FileNotFoundError) as exc:
                print(f"seed {s}: {arm} left out ({exc})")
        if len(pair) < 2:
            continue
        diff = first_difference(run_dir(out, "solo", s), run_dir(out, "member", s))
        row = {"seed": s}
        for arm, o in pair.items():
            row.update({f"{k}_{arm}": o[k] for k in ("p", "a", "b", "final", "takeover", "censored")})
            trajectories[(s, arm)] = o["trajectory"]
        row["knobs_equal"] = all(np.isclose(row[f"{k}_solo"], row[f"{k}_member"], equal_nan=True) for k in "pab")
        row["first_difference_step"] = diff[0] if diff else None
        row["first_difference_phase"] = diff[1] if diff else None
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        raise SystemExit("no finished pairs")
    final = paired_summary(table.final_solo, table.final_member, eq["bootstrap"], eq["bootstrap_seed"])
    takeover = paired_summary(table.takeover_solo, table.takeover_member, eq["bootstrap"], eq["bootstrap_seed"] + 1)
    goal = eq["goal_half_width"]
    holds0 = final["ci95"][0] <= 0 <= final["ci95"][1]
    within = -goal <= final["ci95"][0] and final["ci95"][1] <= goal
    # seeds needed for a +-goal interval at the measured SD of the paired differences (normal approximation)
    needed = int(np.ceil((1.959964 * final["sd_difference"] / goal) ** 2)) if final["sd_difference"] > 0 else len(table)
    wins = {arm: int((table[f"final_{arm}"] > eq["takeover_share"]).sum()) for arm in ("solo", "member")}
    summary = {
        "design": {"config": {**fields}, "seeds": seeds, "population_size": eq["population_size"],
                   "stage1": "one stage-1 model per seed, shared by its solo run and its member (one stage-1 cache)",
                   "final_share": f"mean RS share on trained envs over the last {eq['final_evals']} eval passes",
                   "takeover_step": f"first eval step with RS share on trained envs > {eq['takeover_share']}; "
                                    f"never crossed: censored at {max_steps} (counted as {max_steps})",
                   "interval": f"percentile bootstrap, {eq['bootstrap']} paired resamples of the seeds"},
        "pairs": int(len(table)), "step0_knobs_equal": int(table.knobs_equal.sum()),
        "final_share": final, "takeover_step": takeover,
        "censored": {arm: int(table[f"censored_{arm}"].sum()) for arm in ("solo", "member")},
        "rs_wins": wins, "end_state_agrees": int(((table.final_solo > eq["takeover_share"]) ==
                                                   (table.final_member > eq["takeover_share"])).sum()),
        "identical_runs": int(table.first_difference_step.isna().sum()),
        "first_difference_step_median": float(table.first_difference_step.dropna().median())
        if table.first_difference_step.notna().any() else None,
        "goal": {"half_width": goal, "final_ci_holds_0": bool(holds0), "final_ci_within_goal": bool(within),
                 "takeover_ci_holds_0": bool(takeover["ci95"][0] <= 0 <= takeover["ci95"][1]),
                 "takeover_ci_within_goal_of_budget": bool(abs(takeover["ci95"][0]) <= goal * max_steps
                                                           and abs(takeover["ci95"][1]) <= goal * max_steps),
                 "met": bool(holds0 and within),
                 "seeds_needed_for_goal": needed},
    }
    text = json.dumps(summary, indent=1, default=float)
    print(text)
    f, t = final, takeover
    print(f"population_equivalence pairs={len(table)} final_share_diff={f['mean_difference']:+.3f} "
          f"[{f['ci95'][0]:+.3f}, {f['ci95'][1]:+.3f}] takeover_diff={t['mean_difference']:+.1f} "
          f"[{t['ci95'][0]:+.1f}, {t['ci95'][1]:+.1f}] steps wilcoxon_p={f['wilcoxon_p']:.2f} ks_p={f['ks_p']:.2f} "
          f"goal_met={summary['goal']['met']}")
    if args.write:
        w = Path(args.write)
        w.mkdir(parents=True, exist_ok=True)
        table.to_csv(w / "per_seed.csv", index=False, float_format="%.6g")
        (w / "summary.json").write_text(text + "\n")
        figure(table, trajectories, summary, w / "solo_vs_member.png")
        print(f"wrote {w}/per_seed.csv, summary.json, solo_vs_member.png")


def figure(table, trajectories, summary, path: Path) -> None:
    """Per-seed final RS share and takeover step, solo (x) against member (y); mean RS-share trajectories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    same = table.first_difference_step.isna()
    ax = axes[0]
    ax.plot([0, 1], [0, 1], color="0.7", lw=1)
    jitter = np.random.default_rng(0).uniform(-0.006, 0.006, len(table))
    ax.scatter(table.final_solo[~same], table.final_member[~same] + jitter[~same], s=28, label="pair parted")
    if same.any():
        ax.scatter(table.final_solo[same], table.final_member[same], s=28, marker="s", label="rows identical")
    for _, r in table.iterrows():
        ax.annotate(str(int(r.seed)), (r.final_solo, r.final_member), fontsize=6, xytext=(2, 2),
                    textcoords="offset points", color="0.4")
    f = summary["final_share"]
    ax.set(xlabel="solo (TRL): final RS share", ylabel="population member: final RS share", xlim=(-0.03, 1.03),
           ylim=(-0.03, 1.03), title=f"final RS share (mean of last 3 evals)\nmember − solo {f['mean_difference']:+.3f} "
                                     f"[{f['ci95'][0]:+.3f}, {f['ci95'][1]:+.3f}]")
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[1]
    top = summary["design"]["config"]["max_steps"]
    ax.plot([0, top], [0, top], color="0.7", lw=1)
    pairs = table.groupby(["takeover_solo", "takeover_member"]).size()
    ax.scatter([a for a, _ in pairs.index], [b for _, b in pairs.index], s=18 + 14 * pairs.values)
    for i, ((a, b), n) in enumerate(pairs.items()):
        ax.annotate(f"{n} seeds" if n > 1 else "1 seed", (a, b), fontsize=7, xytext=(8, 6 if i % 2 else -12),
                    textcoords="offset points")
    t = summary["takeover_step"]
    ax.set(xlabel="solo: takeover step", ylabel="member: takeover step", xlim=(-10, top + 10), ylim=(-10, top + 10),
           title=f"takeover step (RS share > 0.5; {top} = never)\nmember − solo {t['mean_difference']:+.1f} "
                 f"[{t['ci95'][0]:+.1f}, {t['ci95'][1]:+.1f}] steps")
    ax = axes[2]
    for arm, color in (("solo", "C0"), ("member", "C1")):
        series = [trajectories[(int(s), arm)] for s in table.seed]
        steps = series[0].index
        for sr in series:
            ax.plot(sr.index, sr.values, color=color, alpha=0.12, lw=0.8)
        mean = np.mean([sr.reindex(steps).values for sr in series], axis=0)
        ax.plot(steps, mean, color=color, lw=2.2, label=f"{arm} mean ({len(series)} seeds)")
    parted = summary.get("first_difference_step_median")
    if parted is not None:
        ax.axvline(parted, color="0.5", ls=":", lw=1)
        ax.annotate(f"pairs part (median step {parted:.0f})", (parted, 0.97), fontsize=7, xytext=(4, 0),
                    textcoords="offset points", color="0.3")
    ax.set(xlabel="GRPO step", ylabel="RS share on trained envs (eval)", ylim=(-0.02, 1.02),
           title="RS share per seed (thin) and mean (thick)")
    ax.legend(fontsize=7)
    c = summary["design"]["config"]
    fig.suptitle(f"Solo (TRL GRPOTrainer) vs population member, same seed and stage-1 model; N = {c['n_envs']}, "
                 f"p0 = {c['p0']}, {c['max_steps']} steps, {summary['pairs']} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train one arm (solo or member) of the comparison")
    p.add_argument("arm", choices=("solo", "member"))
    p.add_argument("--out", required=True)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--seeds", help="subset, e.g. 0-7 or 3,5 (default: the config's)")
    p.add_argument("--size", type=int, help="members per population (default: the config's)")
    p.add_argument("--reverse", action="store_true", help="train in reverse seed order (a second process meets the "
                   "first in the middle; runs in use by the other are skipped)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("diagnose", help="why a solo run and its member part: teacher-forced replay, first difference")
    p.add_argument("--out", required=True)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="max_steps of the diagnosis (default: the config's)")
    p.add_argument("--k", type=int, default=8, help="also replay in a population of K copies (default 8)")
    p.set_defaults(func=cmd_diagnose)
    p = sub.add_parser("gradcheck", help="population vs TRL gradient at every step of a diagnosed solo run")
    p.add_argument("--out", required=True)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_gradcheck)
    p = sub.add_parser("control", help="teacher-forced replay vs itself with rounding-sized gradient noise per step")
    p.add_argument("--out", required=True)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=5e-7, help="relative gradient noise per element and step")
    p.set_defaults(func=cmd_control)
    p = sub.add_parser("analyse", help="paired differences, intervals, tests; --write the table and figure")
    p.add_argument("--out", required=True)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--seeds", help="subset (default: the config's)")
    p.add_argument("--write", help="folder for per_seed.csv, summary.json, solo_vs_member.png")
    p.set_defaults(func=cmd_analyse)
    a = parser.parse_args()
    sys.exit(a.func(a))
