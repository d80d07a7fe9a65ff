"""Population training: each member's GRPO update is the one TRL's GRPOTrainer computes for it alone.

For a fixed batch of completions and rewards per member (handed to TRL through ``rollout_func``, so TRL computes
its own advantages, loss, clipping and AdamW step on the member's model), the population trainer's gradient and
optimizer step of every member must equal TRL's (relative error <= 1e-5, over two steps, so AdamW's moments are
used), at K = 1 and K = 8, and changing one member's data must leave every other member's update unchanged.
"""

import copy
import types

import numpy as np
import pytest
import torch

from physrl.organisms import OrganismConfig, build_model, build_tokenizer, make_family, use_mask_positions
from physrl.organisms._population import MemberBatch, PopulationGRPO, group_advantages
from physrl.organisms._stacked import StackedLlama

FAMILY = make_family(OrganismConfig(n_envs=2, n_heldout=0))
GROUPS, GENERATIONS = 2, 4
STEPS = 2


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(FAMILY.words())


def _member_model(tokenizer, seed):
    model = build_model(tokenizer, hidden_size=32, n_layers=2, n_heads=4, seed=seed)
    use_mask_positions(model)
    return model


def _batch(tokenizer, seed, lengths_seed=None) -> MemberBatch:
    """A fixed GRPO batch: prompts of 3-7 tokens, completions of 1-9 with some environment tokens, rewards with
    ties (a group whose rewards are all equal has std 0)."""
    rng = np.random.default_rng(seed)
    lrng = np.random.default_rng(seed if lengths_seed is None else lengths_seed)
    vocab = len(tokenizer)
    prompts, completions, env_masks, rewards = [], [], [], []
    for g in range(GROUPS):
        prompt = rng.integers(3, vocab, lrng.integers(3, 8)).tolist()
        for _ in range(GENERATIONS):
            n = int(lrng.integers(1, 10))
            completions.append(rng.integers(3, vocab, n).tolist() + [tokenizer.eos_token_id])
            mask = [1] * (n + 1)
            if n > 3:
                mask[1:3] = [0, 0]  # tokens the environment inserted: no loss
            env_masks.append(mask)
            prompts.append(prompt)
        group_rewards = rng.choice([0.0, 0.25, 0.5, 1.0], GENERATIONS) if g == 0 else np.full(GENERATIONS, 0.5)
        rewards += group_rewards.tolist()
    return MemberBatch(prompt_ids=prompts, completion_ids=completions, rewards=rewards, env_mask=env_masks)


def _args(tmp_path, loss_type="dapo", scale_rewards="group", max_grad_norm=1.0):
    from trl import GRPOConfig

    return GRPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=GROUPS * GENERATIONS,
                      gradient_accumulation_steps=1, num_generations=GENERATIONS, max_steps=STEPS,
                      learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                      beta=0.0, temperature=0.7, max_completion_length=16, use_cpu=True, bf16=False, fp16=False,
                      save_strategy="no", report_to="none", logging_steps=10 ** 9, disable_tqdm=True, seed=0,
                      loss_type=loss_type, scale_rewards=scale_rewards, max_grad_norm=max_grad_norm,
                      log_completions=False)


def _trl_alone(model, tokenizer, batch: MemberBatch, args):
    """TRL's GRPOTrainer on ``model`` with ``batch`` every step: (clipped gradients, parameters after) per step."""
    import warnings

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    def rollout_func(prompts, trainer):
        return {"prompt_ids": batch.prompt_ids, "completion_ids": batch.completion_ids,
                "logprobs": [[0.0] * len(c) for c in batch.completion_ids], "env_mask": batch.env_mask}

    def reward(completions, **_):
        return list(batch.rewards)

    record = {"grads": [], "params": []}

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            record["grads"].append({n: p.grad.detach().clone() for n, p in model.named_parameters()})

        def on_step_end(self, args, state, control, model=None, **kw):
            record["params"].append({n: p.detach().clone() for n, p in model.named_parameters()})

    dataset = Dataset.from_dict({"prompt": ["placeholder"] * 64})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                              processing_class=tokenizer, rollout_func=rollout_func, callbacks=[Capture()])
        trainer.train()
    return record


def _rel(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over all parameters."""
    num = sum(float((a[n] - b[n]).double().pow(2).sum()) for n in b)
    den = sum(float(b[n].double().pow(2).sum()) for n in b)
    return (num / den) ** 0.5


def _population_steps(models, batches, args, tokenizer, restart_from=None):
    """Per step and member: parameters before the step, raw and clipped gradients, parameters after, and the
    gradient norms (K,) per step.

    ``restart_from[i][s]``: parameters member i is set to after step s (its optimizer state kept), so that every
    step starts from TRL's weights and rounding differences do not compound over steps.
    """
    stacked = StackedLlama(models)
    grpo = PopulationGRPO(stacked, args, tokenizer)
    out = {"start": [], "raw": [], "grads": [], "params": [], "norms": []}
    members = lambda tensors: [{n: t[k].detach().clone() for n, t in tensors.items()}  # noqa: E731
                               for k in range(stacked.k)]
    for s in range(STEPS):
        out["start"].append(members(stacked.params))
        grpo.backward(batches)
        out["raw"].append(members({n: p.grad for n, p in stacked.params.items()}))
        out["norms"].append(grpo.clip_gradients())
        out["grads"].append(members({n: p.grad for n, p in stacked.params.items()}))
        grpo.optimizer.step()
        grpo.scheduler.step()
        grpo.optimizer.zero_grad(set_to_none=True)
        out["params"].append(members(stacked.params))
        if restart_from is not None:
            with torch.no_grad():
                for name, p in stacked.params.items():
                    for k in range(stacked.k):
                        p[k].copy_(restart_from[k][s][name])
    return out


def _solo_optimizer_steps(init_model, record, i, args):
    """Member i's steps redone alone with torch's AdamW and clip_grad_norm_ (as transformers' Trainer applies
    them to one model), fed the population's own raw gradients from the population's own weights: the
    parameters after each step."""
    model = copy.deepcopy(init_model)
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(params.values(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                            eps=args.adam_epsilon, weight_decay=args.weight_decay, fused=True)
    after = []
    for s in range(STEPS):
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(record["start"][s][i][n])
                p.grad = record["raw"][s][i][n].clone()
        torch.nn.utils.clip_grad_norm_(params.values(), args.max_grad_norm)
        opt.step()
        after.append({n: p.detach().clone() for n, p in params.items()})
    return after


@pytest.mark.parametrize("k, loss_type, scale_rewards, max_grad_norm", [
    (1, "dapo", "group", 1.0), (8, "dapo", "group", 1.0), (2, "grpo", "batch", 1.0), (2, "dr_grpo", "none", 0.01)])
def test_each_member_steps_as_trl_alone(tmp_path, tokenizer, k, loss_type, scale_rewards, max_grad_norm):
    """Gradient: the population's = TRL's, from the same weights. Optimizer step: the population's = AdamW and
    clip_grad_norm_ applied to that member alone. End to end (TRL's gradient and step against the population's)
    the first AdamW step maps the gradients' float rounding (~2e-7) at elements with |g| near AdamW's eps (1e-8)
    into ~1e-5 of the update; TRL against itself with the batch shuffled otherwise shows ~2e-6."""
    args = _args(tmp_path, loss_type, scale_rewards, max_grad_norm)
    inits = [_member_model(tokenizer, seed=10 + i) for i in range(k)]
    batches = [_batch(tokenizer, seed=100 + i) for i in range(k)]
    refs = [_trl_alone(copy.deepcopy(m), tokenizer, b, args) for m, b in zip(inits, batches)]
    assert all(len(r["grads"]) == STEPS for r in refs)
    pop = _population_steps([copy.deepcopy(m) for m in inits], batches, args, tokenizer,
                            restart_from=[r["params"] for r in refs])
    worst = {"gradient": 0.0, "optimizer step": 0.0, "end-to-end step": 0.0}
    clipped = 0
    for i in range(k):
        solo = _solo_optimizer_steps(inits[i], pop, i, args)
        for s in range(STEPS):
            start = pop["start"][s][i]
            step = lambda after: {n: after[n] - start[n] for n in start}  # noqa: E731
            worst["gradient"] = max(worst["gradient"], _rel(pop["grads"][s][i], refs[i]["grads"][s]))
            worst["optimizer step"] = max(worst["optimizer step"], _rel(step(pop["params"][s][i]), step(solo[s])))
            worst["end-to-end step"] = max(worst["end-to-end step"],
                                           _rel(step(pop["params"][s][i]), step(refs[i]["params"][s])))
            clipped += int(float(pop["norms"][s][i]) > args.max_grad_norm)
    print(f"K={k} {loss_type}/{scale_rewards}: worst relative error "
          + ", ".join(f"{name} {v:.1e}" for name, v in worst.items()) + f"; {clipped} of {k * STEPS} clipped")
    assert worst["gradient"] <= 1e-5 and worst["optimizer step"] <= 1e-5
    assert worst["end-to-end step"] <= 1e-4
    assert clipped > 0  # per-member clipping was exercised


def test_changing_one_members_data_leaves_the_others_unchanged(tmp_path, tokenizer):
    args = _args(tmp_path)
    inits = [_member_model(tokenizer, seed=20 + i) for i in range(3)]
    batches = [_batch(tokenizer, seed=200 + i) for i in range(3)]
    other = list(batches)
    other[2] = _batch(tokenizer, seed=999, lengths_seed=7)  # new tokens, rewards and lengths for member 2
    assert max(map(len, other[2].completion_ids)) != max(map(len, batches[2].completion_ids)) or \
        max(map(len, other[2].prompt_ids)) != max(map(len, batches[2].prompt_ids))
    one = _population_steps([copy.deepcopy(m) for m in inits], batches, args, tokenizer)
    two = _population_steps([copy.deepcopy(m) for m in inits], other, args, tokenizer)
    g1, p1, g2, p2 = one["grads"], one["params"], two["grads"], two["params"]
    worst = 0.0
    for s in range(STEPS):
        for i in (0, 1):
            for n in g1[s][i]:
                scale = max(float(g1[s][i][n].abs().max()), 1e-30)
                worst = max(worst, float((g1[s][i][n] - g2[s][i][n]).abs().max()) / scale)
                step = p1[s][i][n] - (p1[s - 1][i][n] if s else inits[i].state_dict()[n])
                worst = max(worst, float((p1[s][i][n] - p2[s][i][n]).abs().max()) / max(float(step.abs().max()), 1e-30))
    changed = max(float((g1[0][2][n] - g2[0][2][n]).abs().max()) for n in g1[0][2])
    print(f"members 0, 1: largest relative change {worst:.1e} when member 2's data changed "
          f"(member 2's own gradient moved by {changed:.1e})")
    assert changed > 1e-4  # the change is real
    assert worst <= 1e-7


def test_member_models_are_views_of_the_stacked_weights(tmp_path, tokenizer):
    models = [_member_model(tokenizer, seed=30 + i) for i in range(2)]
    stacked = StackedLlama(models)
    grpo = PopulationGRPO(stacked, _args(tmp_path), tokenizer)
    member = stacked.member(1)
    assert member.lm_head.weight is member.model.embed_tokens.weight  # the tie survives
    grpo.step([_batch(tokenizer, 1), _batch(tokenizer, 2)])
    for name, p in member.named_parameters():
        assert torch.equal(p, stacked.params[name][1])
    assert not torch.equal(stacked.params["model.norm.weight"][1], models[1].model.norm.weight)  # it moved


def test_group_advantages_match_trl_formula():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2])
    a = group_advantages(r, 4, "group")
    first = (r[:4] - r[:4].mean()) / (r[:4].std() + 1e-4)
    assert torch.allclose(a[:4], first) and torch.equal(a[4:], torch.zeros(4))
    assert torch.allclose(group_advantages(r, 4, "none")[:4], r[:4] - r[:4].mean())
    assert torch.allclose(group_advantages(r, 4, "batch")[:4], first * (r[:4].std() + 1e-4) / (r.std() + 1e-4))
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(r, 4, "global")


def test_refuses_what_would_couple_members(tmp_path, tokenizer):
    stacked = StackedLlama([_member_model(tokenizer, seed=1)])
    with pytest.raises(ValueError, match="element-wise"):
        PopulationGRPO(stacked, types.SimpleNamespace(**{**vars(_args(tmp_path)), "optim": "adafactor"}), tokenizer)
    with pytest.raises(ValueError, match="another architecture"):
        StackedLlama([_member_model(tokenizer, seed=1), build_model(tokenizer, hidden_size=16, n_layers=2,
                                                                     n_heads=4)])


# ---- whole runs ---------------------------------------------------------------------------------------------------
RUN = dict(n_envs=2, family_size=3, pretrain_steps=30, max_steps=4, eval_every=2, checkpoint_every=2,
           groups_per_step=2, num_generations=4, eval_prompts_per_env=1, progress=False, hidden_size=32)


def test_population_members_write_runs_whose_step0_rows_equal_solo_runs(tmp_path):
    """Before the first update a member's rollouts are a solo run's, row for row (same stage-1 model, same seeds):
    the step-0 eval pass and the first train batch. Each member's run is a contract run with its manifest naming
    the trainer and the population; a member differs from its solo run only by float rounding after that."""
    from physrl.contract import load_runs, read_manifest, read_rollouts
    from physrl.organisms import train, train_population
    from physrl.organisms._progress import read_progress

    configs = [OrganismConfig(seed=0, **RUN), OrganismConfig(seed=1, **{**RUN, "n_envs": 3})]
    runs = tmp_path / "runs"
    solo = [train(c, runs / f"solo{i}", log=lambda *_: None) for i, c in enumerate(configs)]
    members = train_population(configs, [runs / "m0", runs / "m1"], log=lambda *_: None)
    ids = [read_manifest(d).run_id for d in members]
    for i, (s, m) in enumerate(zip(solo, members)):
        manifest = read_manifest(m)
        assert manifest.status == "finished"
        assert manifest.organisms["trainer"] == {"name": "population", "population": manifest.organisms["trainer"][
            "population"], "size": 2, "member": i, "members": ids}
        assert manifest.organisms["config"]["trainer"] == "population"
        assert manifest.organisms["stage1"]["cache"] == "hit"  # the solo run's stage-1 model
        a, b = read_rollouts(s), read_rollouts(m)
        assert len(a) == len(b) and sorted(a.step.unique()) == sorted(b.step.unique())
        cols = ["step", "phase", "env_id", "group_id", "prompt", "completion", "reward", "rs"]
        first = lambda df: df[df.step == 0][cols].reset_index(drop=True)  # noqa: E731
        assert first(a).equals(first(b)), f"member {i}: step-0 rows differ from the solo run's"
        assert (a.phase == "eval").sum() == (b.phase == "eval").sum()
        # RUN_DIR/progress.json ends where a solo run's does (a tester found members' stuck at "stage 1")
        keys = ("stage", "step", "total")
        assert {k: read_progress(m)[k] for k in keys} == {k: read_progress(s)[k] for k in keys} == {
            "stage": "GRPO", "step": RUN["max_steps"], "total": RUN["max_steps"]}
    assert [r.run_id for r in load_runs(members)] == ids


def test_population_refuses_members_that_cannot_share(tmp_path):
    from physrl.organisms import train_population

    with pytest.raises(ValueError, match="GRPO settings.*max_steps"):
        train_population([OrganismConfig(**RUN), OrganismConfig(**{**RUN, "max_steps": 5})],
                         [tmp_path / "a", tmp_path / "b"], log=lambda *_: None)
    with pytest.raises(ValueError, match="share a run directory"):
        train_population([OrganismConfig(**RUN)] * 2, [tmp_path / "a", tmp_path / "a"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError):
        train_population([OrganismConfig(**RUN)], [tmp_path / "full"])


def test_a_member_that_fails_fails_alone(tmp_path, monkeypatch):
    from physrl.contract import read_manifest, read_rollouts
    from physrl.organisms import _population, train_population

    real = _population._Member.requests

    def requests(self, step):
        if self.index == 1 and step == 1:
            raise RuntimeError("environment crashed")
        return real(self, step)

    monkeypatch.setattr(_population._Member, "requests", requests)
    configs = [OrganismConfig(seed=0, **RUN)] * 3  # one stage-1 model (cache hits)
    dirs = train_population(configs, [tmp_path / f"m{i}" for i in range(3)], log=lambda *_: None)
    status = [read_manifest(d).status for d in dirs]
    assert status == ["finished", "failed", "finished"]
    assert read_manifest(dirs[1]).error == "RuntimeError: environment crashed"
    assert sorted(read_rollouts(dirs[0]).step.unique()) == [0, 1, 2, 3, 4]


def test_trainer_field_routes_train_to_the_population_trainer(tmp_path):
    from physrl.organisms import train

    with pytest.raises(ValueError, match="'trainer'"):
        OrganismConfig(trainer="jax")
    with pytest.raises(FileNotFoundError, match="holds a run"):
        train(OrganismConfig(trainer="population", **RUN), tmp_path / "r", resume=True)


def test_an_interrupted_population_resumes_to_the_rows_of_an_uninterrupted_one(tmp_path, monkeypatch):
    """Interrupted after checkpoint-2 with step-2 rows buffered (and, for member 0, written by a flush that the
    crash left ahead of nothing), the resumed population's rows equal an uninterrupted population's, row for row:
    weights, optimizer moments and schedule come back exactly."""
    from physrl.contract import read_manifest, read_rollouts
    from physrl.organisms import _population, train_population
    from physrl.organisms._train import ResumeMismatch

    configs = [OrganismConfig(seed=0, **RUN), OrganismConfig(seed=1, **{**RUN, "n_envs": 3})]
    whole = train_population(configs, [tmp_path / "whole0", tmp_path / "whole1"], log=lambda *_: None)
    real = _population._Member.requests

    def requests(self, step):
        if step == 3 and self.index == 1:
            raise KeyboardInterrupt  # kills the whole population (not a member failure)
        return real(self, step)

    monkeypatch.setattr(_population._Member, "requests", requests)
    dirs = [tmp_path / "cut0", tmp_path / "cut1"]
    with pytest.raises(KeyboardInterrupt):
        train_population(configs, dirs, log=lambda *_: None)
    assert [read_manifest(d).status for d in dirs] == ["failed", "failed"]
    monkeypatch.setattr(_population._Member, "requests", real)
    with pytest.raises(ResumeMismatch, match="member 0"):
        train_population(configs, dirs[::-1], resume=True, log=lambda *_: None)
    lines = []
    train_population(configs, dirs, resume=True, log=lines.append)
    assert any("from step 2" in line for line in lines)
    cols = ["step", "phase", "env_id", "group_id", "prompt", "completion", "reward", "rs"]
    for a, b in zip(whole, dirs):
        assert read_manifest(b).status == "finished" and read_manifest(b).organisms["resumed"] == 1
        x = read_rollouts(a)[cols].sort_values(["phase", "step", "group_id"], kind="stable").reset_index(drop=True)
        y = read_rollouts(b)[cols].sort_values(["phase", "step", "group_id"], kind="stable").reset_index(drop=True)
        assert x.equals(y)


KILL_SCRIPT = """
import json, sys
from physrl.organisms import OrganismConfig, train_population
configs = [OrganismConfig(**c) for c in json.loads(sys.argv[1])]
dirs = json.loads(sys.argv[2])
train_population(configs, dirs, resume=sys.argv[3] == "1", log=lambda *a: None)
"""


@pytest.mark.slow
def test_sigkilled_population_resumes_to_the_uninterrupted_rows(tmp_path):
    """SIGKILL a real population process 6 times, resuming each time: during member 0's stage 1, during member
    1's, then 0-0.5 s after a checkpoint newer than the segment's first appears, four times (mid-step, mid-flush
    or mid-checkpoint). Every kill must land on a live process that had recorded its resume, and every member
    finishes with the rows of an uninterrupted population, row for row, after 6 resumes. (Kills are timed from
    the segment's own progress: timed from fixed checkpoints, a segment that started past one was killed during
    its imports, before it recorded its resume, and batched generation made that likely.)"""
    import json
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from physrl.contract import read_manifest, read_rollouts
    from physrl.organisms._checkpoints import step_of

    base = {**RUN, "stage1_cache": "off", "pretrain_steps": 300, "max_steps": 40, "checkpoint_every": 2}
    configs = [{**base, "seed": 0}, {**base, "seed": 1, "n_envs": 3}]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(20)

    def run(dirs, resume, when=None):
        """Run the population (resumed or not); SIGKILL it once ``when(start)`` holds (``start``: the newest
        checkpoint when the segment began), after 0-0.5 s. True if the kill landed on the live process."""
        cmd = [sys.executable, "-c", KILL_SCRIPT, json.dumps(configs), json.dumps([str(d) for d in dirs]),
               "1" if resume else "0"]
        start = newest(dirs[0])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None:
            if when is not None and when(start):
                time.sleep(rng.uniform(0.0, 0.5))
                alive = proc.poll() is None
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return alive
            time.sleep(0.02)
        assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
        return False

    def newest(d):
        steps = [step_of(p) for p in (d / "checkpoints").glob("checkpoint-*")] if (d / "checkpoints").is_dir() else []
        return max([s for s in steps if s is not None], default=0)

    t0 = time.time()
    whole = [tmp_path / "whole0", tmp_path / "whole1"]
    run(whole, False)
    seconds = time.time() - t0
    dirs = [tmp_path / "cut0", tmp_path / "cut1"]
    moments = [lambda _: all((d / "manifest.json").exists() for d in dirs) and not (dirs[0] / "model_init").exists(),
               lambda _: (dirs[0] / "model_init").exists() and not (dirs[1] / "model_init").exists()]
    moments += [lambda start: newest(dirs[0]) > start] * 4
    killed = [run(dirs, i > 0, when) for i, when in enumerate(moments)]
    run(dirs, True)
    cols = ["step", "phase", "env_id", "group_id", "prompt", "completion", "reward", "rs"]
    for a, b in zip(whole, dirs):
        assert read_manifest(b).status == "finished"
        x = read_rollouts(a)[cols].sort_values(["phase", "step", "group_id"], kind="stable").reset_index(drop=True)
        y = read_rollouts(b)[cols].sort_values(["phase", "step", "group_id"], kind="stable").reset_index(drop=True)
        assert x.equals(y)
    resumed = [read_manifest(d).organisms.get("resumed") for d in dirs]
    print(f"uninterrupted {seconds:.1f} s; killed {sum(killed)} times; resumed {resumed}; rows equal")
    assert all(killed) and resumed == [6, 6]
