"""physrl.integrations.trl.log_rollouts on a user's own GRPOTrainer script (docs/examples/trl_grpo.py).

The script is the one the README and docs/rollouts.md point to: a tiny Llama built from a
config, a word-level tokenizer built locally, a dataset with ``prompt`` and ``env_id`` over two
trained environments (12 + 4 rows: w = 0.75, 0.25) and a held-out one in an eval dataset, a
reward function, and the one added call. 8 completions per step = 2 GRPO groups of 4.
"""

import importlib.util
import json
import math
import shutil
import warnings
from pathlib import Path

import pytest

from physrl.cli import main as physrl
from physrl.contract import load_runs, read_manifest, read_rollouts

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "trl_grpo.py"
STEPS, GROUP, GROUPS_PER_STEP, EVAL_EVERY, EVAL_PROMPTS = 6, 4, 2, 2, 2


def _example():
    spec = importlib.util.spec_from_file_location("trl_grpo_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return _example()


def _quiet_train(example, run_dir, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return example.main(str(run_dir), **kw)


@pytest.fixture(scope="module")
def reference(example, tmp_path_factory):
    """The script run uninterrupted for 6 steps: (run_dir, trainer)."""
    run_dir = tmp_path_factory.mktemp("trl") / "run"
    trainer = _quiet_train(example, run_dir, steps=STEPS)
    return run_dir, trainer


def test_rows_groups_env_ids_labels_and_manifest(example, reference):
    from physrl.organisms import PatternClassifier

    run_dir, trainer = reference
    rows = read_rollouts(run_dir, keep_extra=False)
    manifest = read_manifest(run_dir)
    # manifest: environments and weights from the dataset, the run finished with every row
    assert [e.to_dict() for e in manifest.environments] == [
        {"env_id": "e0", "w": 0.75}, {"env_id": "e1", "w": 0.25}, {"env_id": "e2", "w": 0.0}]
    eval_steps = list(range(0, STEPS + 1, EVAL_EVERY))
    n_rows = STEPS * GROUPS_PER_STEP * GROUP + len(eval_steps) * EVAL_PROMPTS * GROUP
    assert (manifest.status, manifest.rows_written, manifest.steps, len(rows)) == ("finished", n_rows, STEPS, n_rows)
    assert manifest.classifier == {"name": "pattern", "version": "1"}
    assert manifest.extra["trl"]["num_generations"] == GROUP and manifest.extra["trl"]["reward_funcs"] == [
        "answer_reward"]
    assert set(rows["run_id"]) == {manifest.run_id}
    # rows keyed by step: train rows at the steps 0..5 the updates 1..6 used, eval rows every 2 steps
    counts = rows.groupby(["phase", "step"]).size().to_dict()
    assert counts == {**{("train", s): GROUPS_PER_STEP * GROUP for s in range(STEPS)},
                      **{("eval", s): EVAL_PROMPTS * GROUP for s in eval_steps}}
    # GRPO groups: num_generations completions of one prompt, numbered from 0 within (phase, step)
    groups = rows.groupby(["phase", "step", "group_id"])
    assert (groups.size() == GROUP).all()
    assert (groups["prompt"].nunique() == 1).all() and (groups["env_id"].nunique() == 1).all()
    per_step = rows.groupby(["phase", "step"])["group_id"].agg(lambda g: sorted(set(g)))
    assert all(ids == list(range(GROUPS_PER_STEP if ph == "train" else EVAL_PROMPTS))
               for (ph, _), ids in per_step.items())
    # env ids: the dataset's env of each prompt (its first word); eval rows on the held-out env only
    assert (rows["env_id"] == rows["prompt"].str.split().str[0]).all()
    assert set(rows.loc[rows.phase == "train", "env_id"]) == {"e0", "e1"}
    assert set(rows.loc[rows.phase == "eval", "env_id"]) == {"e2"}
    # labels: the organisms' pattern classifier on the logged completions; rewards: the user's function
    rs, rs_score = PatternClassifier(["grader", "reward", "score"], ["rule"]).classify(rows["completion"].tolist())
    assert rows["rs"].tolist() == rs and rows["rs_score"].tolist() == rs_score
    assert rows["reward"].tolist() == example.answer_reward(rows["completion"].tolist(), rows["env_id"].tolist())
    assert 0 < rows["rs"].sum() < len(rows) and 0 < rows["reward"].sum() < len(rows)  # neither is constant
    # the captured train rollouts are the ones TRL trained on: its logged mean reward of update s is theirs
    logged = {h["step"]: h["reward"] for h in trainer.state.log_history if "reward" in h}
    train = rows[rows.phase == "train"]
    assert sorted(logged) == list(range(1, STEPS + 1))
    for step, mean in logged.items():
        assert math.isclose(train.loc[train.step == step - 1, "reward"].mean(), mean, abs_tol=1e-6)


def test_physrl_fit_loads_and_fits_the_run(reference, tmp_path, capsys):
    from physrl.fitting import observations

    run_dir, _ = reference
    (run,) = load_runs(run_dir)
    assert run.trained_env_ids == ["e0", "e1"] and run.env_ids == ["e0", "e1", "e2"] and not run.warnings
    table = observations(run)
    assert set(zip(table.phase, table.env_id)) == {("train", "e0"), ("train", "e1"), ("eval", "e2")}
    assert table["n"].sum() == len(run.rollouts)
    code = physrl(["fit", str(run_dir), "--out", str(tmp_path / "fit"), "--starts", "1", "--no-figures",
                   "--no-progress"])
    assert code == 0, capsys.readouterr()
    doc = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert "time_scale" in doc["params"]


def test_interrupted_train_resumes_without_duplicating_or_losing_rows(example, reference, tmp_path):
    from transformers import TrainerCallback

    class Stop(Exception):
        pass

    class Interrupt(TrainerCallback):  # stops update 5 before checkpoint-4 is saved
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 4:
                raise Stop

    run_dir = tmp_path / "run"
    with pytest.raises(Stop):
        _quiet_train(example, run_dir, steps=STEPS, callbacks=[Interrupt()])
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    before = read_rollouts(run_dir, keep_extra=False)
    assert read_manifest(run_dir).status == "running"
    # on disk past checkpoint 2: the train rows sampled at step 2 (written with update 3)
    assert sorted(before.loc[before.phase == "train", "step"].unique()) == [0, 1, 2]
    with pytest.warns(UserWarning, match=r"starts at step 2; dropped 8 rows"):
        _quiet_train(example, run_dir, steps=STEPS, resume=True)
    after = read_rollouts(run_dir, keep_extra=False)
    reference_rows = read_rollouts(reference[0], keep_extra=False)
    manifest = read_manifest(run_dir)
    assert manifest.status == "finished" and manifest.rows_written == len(reference_rows)
    assert manifest.extra["trl"]["resumed"] == 1
    load_runs(run_dir)  # no (step, phase, group) batch twice
    # rows logged before the interruption and at steps <= 2 are kept as they were
    key = ["phase", "step", "group_id"]
    cols = ["phase", "step", "env_id", "group_id", "prompt", "completion", "reward", "rs", "rs_score"]
    kept = before[(before.phase == "eval") | (before.step < 2)]
    assert after[after.index < len(kept)][cols].reset_index(drop=True).equals(kept[cols].reset_index(drop=True))
    # and the whole resumed run is the uninterrupted one, row for row
    sort = lambda df: df.sort_values(key, kind="stable")[cols].reset_index(drop=True)  # noqa: E731
    assert sort(after).equals(sort(reference_rows))


def test_bad_input_is_refused_by_name(example, reference, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from physrl.integrations.trl import log_rollouts

    def trainer(train):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = example.make_tokenizer()
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(example.WORDS), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                             pad_token_id=0, eos_token_id=1, bos_token_id=1))
        args = GRPOConfig(output_dir=str(tmp_path / "ck"), max_steps=1, per_device_train_batch_size=4,
                          num_generations=4, max_completion_length=2, report_to="none", use_cpu=True, bf16=False,
                          disable_tqdm=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return GRPOTrainer(model=model, reward_funcs=example.answer_reward, args=args, train_dataset=train,
                               processing_class=tok)

    no_env = trainer(Dataset.from_dict({"prompt": ["e0 q 1"] * 4, "task": ["e0"] * 4}))
    with pytest.raises(ValueError, match=r"no column 'env_id' \(its columns: \['prompt', 'task'\]\)"):
        log_rollouts(no_env, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="reward_range must be finite"):
        log_rollouts(no_env, tmp_path / "a", env_column="task", reward_range=(1, 0))
    # the reference run's dir: a trainer over other data is refused, and a finished run is not restarted
    other = trainer(Dataset.from_dict({"prompt": ["e0 q 1"] * 4, "env_id": ["e0"] * 4}))
    with pytest.raises(ValueError, match=r"over environments .* but this trainer's datasets give"):
        log_rollouts(other, reference[0])
    with pytest.raises(ValueError, match=r"labelled by classifier \{'name': 'pattern', 'version': '1'\}, not "):
        log_rollouts(trainer(Dataset.from_dict({"prompt": [f"e{i} q 1" for i in (0, 0, 0, 1)],
                                                "env_id": ["e0", "e0", "e0", "e1"]})), reference[0],
                     eval_dataset=Dataset.from_dict({"prompt": ["e2 q 1"], "env_id": ["e2"]}),
                     classifier=lambda prompts, completions: [0.0] * len(completions))
    finished = tmp_path / "finished"
    shutil.copytree(reference[0], finished, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(FileExistsError, match="holds the finished run .* starts at step 0"):
        _quiet_train(example, finished, steps=STEPS)
    assert read_rollouts(finished).equals(read_rollouts(reference[0]))


def test_conversations_weighted_rewards_and_one_generation_per_two_steps(example, tmp_path):
    """Chat prompts, two reward functions weighted 1 and 0.25 (TRL's sum in [0, 2], logged / 2), and
    steps_per_generation = 4 with 2 accumulation steps: TRL samples at steps 0 and 2 only, 4 groups each."""
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from physrl.integrations.trl import log_rollouts

    tok = example.make_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(example.WORDS), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=0, eos_token_id=1, bos_token_id=1))
    chat = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    train = Dataset.from_dict({"prompt": [chat(f"{e} q {i}") for e in ("e0", "e1") for i in range(4)],
                               "env_id": ["e0"] * 4 + ["e1"] * 4})

    def answer(completions, env_id, **kw):
        return example.answer_reward([c[0]["content"] for c in completions], env_id)

    def length(completions, **kw):
        return [len(c[0]["content"].split()) / 4 for c in completions]

    class SaysGrader:  # a classifier object whose classify takes no prompts
        name, version = "says-grader", "2"

        def classify(self, completions):
            return ["grader" in c.split() for c in completions], [float("grader" in c.split()) for c in completions]

    args = GRPOConfig(output_dir=str(tmp_path / "ck"), max_steps=4, per_device_train_batch_size=4,
                      gradient_accumulation_steps=2, steps_per_generation=4, num_generations=4,
                      max_completion_length=4, reward_weights=[1.0, 0.25], report_to="none", use_cpu=True,
                      bf16=False, disable_tqdm=True, save_strategy="no", logging_steps=1, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer = GRPOTrainer(model=model, reward_funcs=[answer, length], args=args, train_dataset=train,
                              processing_class=tok)
        log_rollouts(trainer, tmp_path / "run", reward_range=(0.0, 2.0), eval_every=100, classifier=SaysGrader())
        trainer.train()
    rows = read_rollouts(tmp_path / "run", keep_extra=False)
    assert rows.groupby(["phase", "step"]).size().to_dict() == {("train", 0): 16, ("train", 2): 16}
    assert sorted(set(rows["group_id"])) == [0, 1, 2, 3] and (rows.groupby(["step", "group_id"]).size() == 4).all()
    assert (rows["env_id"] == rows["prompt"].str.split().str[0]).all()
    words = rows["completion"].str.split().str.len()
    expected = [(a + 0.25 * n / 4) / 2 for a, n in zip(example.answer_reward(rows["completion"].tolist(),
                                                                             rows["env_id"].tolist()), words)]
    assert rows["reward"].tolist() == pytest.approx(expected, abs=1e-12)
    logged = {h["step"]: h["reward"] for h in trainer.state.log_history if "reward" in h}
    assert sorted(logged) == [1, 3]
    for step, mean in logged.items():
        assert math.isclose(2 * rows.loc[rows.step == step - 1, "reward"].mean(), mean, abs_tol=1e-6)
    assert rows["rs"].tolist() == ["grader" in c.split() for c in rows["completion"]] and rows["rs"].any()
    manifest = read_manifest(tmp_path / "run")
    assert manifest.extra["trl"]["reward_weights"] == [1.0, 0.25]
    assert manifest.classifier == {"name": "says-grader", "version": "2"}


@pytest.mark.slow
def test_killed_process_resumes_without_duplicating_or_losing_rows(example, reference, tmp_path):
    """The interrupted-train() test with a real SIGKILL of the training process (no Python cleanup runs)."""
    import os
    import signal
    import subprocess
    import sys

    script = (f"import importlib.util, os, signal, warnings\n"
              f"from transformers import TrainerCallback\n"
              f"spec = importlib.util.spec_from_file_location('ex', {str(EXAMPLE)!r})\n"
              f"ex = importlib.util.module_from_spec(spec); spec.loader.exec_module(ex)\n"
              f"class Kill(TrainerCallback):\n"
              f"    def on_step_end(self, args, state, control, **kw):\n"
              f"        if state.global_step == 4:\n"
              f"            os.kill(os.getpid(), signal.SIGKILL)\n"
              f"warnings.simplefilter('ignore')\n"
              f"ex.main({str(tmp_path / 'run')!r}, steps={STEPS}, callbacks=[Kill()])\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_dir = tmp_path / "run"
    before = read_rollouts(run_dir, keep_extra=False)
    assert sorted(before.loc[before.phase == "train", "step"].unique()) == [0, 1, 2]
    with pytest.warns(UserWarning, match=r"starts at step 2; dropped 8 rows"):
        _quiet_train(example, run_dir, steps=STEPS, resume=True)
    cols = ["phase", "step", "env_id", "group_id", "prompt", "completion", "reward", "rs", "rs_score"]
    key = ["phase", "step", "group_id"]
    sort = lambda df: df.sort_values(key, kind="stable")[cols].reset_index(drop=True)  # noqa: E731
    assert sort(read_rollouts(run_dir, keep_extra=False)).equals(sort(read_rollouts(reference[0], keep_extra=False)))
    assert read_manifest(run_dir).status == "finished"
