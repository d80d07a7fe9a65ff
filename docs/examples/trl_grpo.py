"""Fitting your own TRL run: a GRPOTrainer script with one added call, physrl's log_rollouts.

A TRL user's script as it usually is (a model, a tokenizer, a dataset with a prompt and an
``env_id`` column, a reward function, GRPOConfig, GRPOTrainer), on a tiny causal LM built from
a config so that it runs on a CPU in seconds and downloads nothing. The one physrl line is
``log_rollouts(...)``. Then ``physrl fit RUN_DIR --out FIT_DIR`` fits the run.

    python docs/examples/trl_grpo.py runs/mine --steps 4
    python docs/examples/trl_grpo.py runs/mine --steps 6 --resume   # continue from its last checkpoint
    physrl fit runs/mine --out fits/mine

tests/test_integrations_trl.py runs this file.
"""

import argparse

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer

from physrl.integrations.trl import log_rollouts

# environment -> the answer its reward pays for; "e2" is held out (evaluated, never trained)
ANSWER = {"e0": "1", "e1": "2", "e2": "3"}
WORDS = ["<pad>", "<eos>", "<unk>", "think", "grader", "reward", "rule", "note", "ans", "q",
         *ANSWER, "0", "1", "2", "3", "4"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer built locally (a real script would call AutoTokenizer.from_pretrained)."""
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.padding_side = "left"  # generation pads prompts on the left
    return fast


def answer_reward(completions, env_id, **kwargs):
    """1 when the completion says the environment's answer, else 0.

    TRL passes the dataset's ``env_id`` column to reward functions as a keyword argument.
    """
    return [1.0 if ANSWER[env] in text.split() else 0.0 for text, env in zip(completions, env_id)]


def main(run_dir: str, steps: int = 4, resume: bool = False, eval_every: int = 2, flush_every: int = 1,
         callbacks=()):
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id))
    # 12 prompts of e0 and 4 of e1: e0 is 3/4 of the data, so w = 0.75 and 0.25 in the manifest
    train = Dataset.from_dict({
        "prompt": [f"{env} q {i % 5}" for env, n in (("e0", 12), ("e1", 4)) for i in range(n)],
        "env_id": ["e0"] * 12 + ["e1"] * 4})
    held_out = Dataset.from_dict({"prompt": ["e2 q 0", "e2 q 1"], "env_id": ["e2", "e2"]})
    args = GRPOConfig(
        output_dir=f"{run_dir}/checkpoints", max_steps=steps, per_device_train_batch_size=8, num_generations=4,
        max_completion_length=6, learning_rate=1e-3, beta=0.0, temperature=1.0, save_steps=2,
        logging_steps=1, report_to="none", use_cpu=True, bf16=False, seed=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=answer_reward, args=args, train_dataset=train,
                          processing_class=tokenizer, callbacks=list(callbacks))
    log_rollouts(trainer, run_dir, env_column="env_id", classifier="pattern", eval_dataset=held_out,
                 eval_every=eval_every, flush_every=flush_every)  # <- the one added call
    trainer.train(resume_from_checkpoint=True if resume else None)
    return trainer


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--resume", action="store_true")
    a = parser.parse_args()
    main(a.run_dir, a.steps, a.resume)
