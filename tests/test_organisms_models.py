"""Bring your own model: any local causal LM written with save_pretrained (tokenizer included) trains as an organism.

Four architectures are built here from configs (nothing is downloaded), each saved with a tokenizer of its own:

* Llama (rotary positions; the built-in word-level tokenizer),
* GPT-2 (learned absolute positions; a word-level tokenizer with no pad token that pads on the right, as GPT-2's),
* GPT-NeoX (partial rotary; a SentencePiece-style BPE tokenizer trained here, no pad token, right padding),
* Qwen2 (rotary, grouped-query attention; word-level), for the scoring check only.

Scoring is TRL 1.16's own (``GRPOTrainer._get_per_token_logps_and_entropies`` with its fused log-prob head) on a
batch laid out as TRL lays it out (prompts padded on the left, completions on the right): every sequence's
per-token log-probabilities must equal those of the sequence scored alone.
"""

import contextlib
import json
import types

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig,
                          LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

from physrl.organisms import (OrganismConfig, build_tokenizer, load_model, make_family, prepare_tokenizer,
                              read_manifest, read_rollouts, train, use_mask_positions)
from physrl.organisms.families.digit_map.words import EOS, UNK
from physrl.organisms._rollout import word_codec
from physrl.organisms.cli import main as organisms_main

FAMILY = make_family(OrganismConfig(n_envs=2, n_heldout=0))
RUN = dict(n_envs=2, n_heldout=0, max_steps=10, eval_every=10, checkpoint_every=10, groups_per_step=2,
           num_generations=4, eval_prompts_per_env=1, progress=False, seed=1)


def _word_level(pad: bool):
    """The family's word-level tokenizer; without a pad token and padding on the right when ``pad`` is False."""
    tok = build_tokenizer(FAMILY.words())
    if pad:
        return tok
    bare = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token=EOS, unk_token=UNK)
    bare.padding_side = "right"
    return bare


def _sentencepiece_bpe(regex_split: bool = False):
    """A BPE tokenizer trained here on the family's texts: Metaspace words (``▁grader``), or GPT-2's byte-level
    regex split (which splits ``e0`` into ``e`` + ``0``, so it cannot express the env ids as single tokens)."""
    tok = Tokenizer(models.BPE())
    if regex_split:
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    else:
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(FAMILY.words(), 12)) for _ in range(400)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                       show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.padding_side = "right"
    return fast


def _build(arch: str):
    """(model, tokenizer) of ``arch``, freshly initialised (seed 0)."""
    torch.manual_seed(0)
    if arch == "llama":
        tok = _word_level(pad=True)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                             max_position_embeddings=64, tie_word_embeddings=True,
                                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    elif arch == "gpt2":
        tok = _word_level(pad=False)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                           eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    elif arch == "gpt_neox":
        tok = _sentencepiece_bpe()
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=2, num_attention_heads=4, rotary_pct=0.5,
                                                 max_position_embeddings=64, eos_token_id=tok.eos_token_id,
                                                 bos_token_id=tok.eos_token_id))
    elif arch == "qwen2":
        tok = _word_level(pad=True)
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                                             eos_token_id=tok.eos_token_id))
    else:
        raise ValueError(arch)
    return model, tok


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for arch in ("llama", "gpt2", "gpt_neox", "qwen2"):
        model, tok = _build(arch)
        model.save_pretrained(root / arch)
        tok.save_pretrained(root / arch)
        dirs[arch] = root / arch
    return dirs


def _trl_scores(model, input_ids, attention_mask, logits_to_keep):
    """Per-token log-probabilities as TRL 1.16's GRPO scores completions (its own method, fused head)."""
    from trl import GRPOTrainer

    accelerator = types.SimpleNamespace(autocast=contextlib.nullcontext, is_main_process=True)
    stub = types.SimpleNamespace(accelerator=accelerator)  # what the method reads of the trainer
    with torch.no_grad():
        return GRPOTrainer._get_per_token_logps_and_entropies(stub, model, input_ids, attention_mask,
                                                              logits_to_keep)[0]


def padded_vs_alone_error(model, tokenizer, n: int = 8, seed: int = 0) -> float:
    """Largest |log p| difference between ``n`` sequences scored in one TRL-style padded batch and each alone."""
    codec = word_codec(tokenizer, FAMILY)
    rng = np.random.default_rng(seed)
    words = FAMILY.words()
    prompts = [codec.ids(rng.choice(words, int(k))) for k in rng.integers(3, 10, n)]
    completions = [codec.ids(rng.choice(words, int(k))) for k in rng.integers(2, 9, n)]
    pw, cw = max(map(len, prompts)), max(map(len, completions))
    pad = tokenizer.pad_token_id
    ids = torch.full((n, pw + cw), pad, dtype=torch.long)
    att = torch.zeros((n, pw + cw), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):  # TRL: prompts left-padded, completions right-padded
        ids[i, pw - len(p): pw], att[i, pw - len(p): pw] = torch.tensor(p), 1
        ids[i, pw: pw + len(c)], att[i, pw: pw + len(c)] = torch.tensor(c), 1
    together = _trl_scores(model, ids, att, cw)
    worst = 0.0
    for i, (p, c) in enumerate(zip(prompts, completions)):
        seq = torch.tensor([p + c])
        alone = _trl_scores(model, seq, torch.ones_like(seq), len(c))[0]
        worst = max(worst, float((together[i, : len(c)] - alone).abs().max()))
    return worst


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "qwen2"])
def test_padded_batch_scores_every_sequence_as_alone(model_dirs, arch):
    """TRL's scoring of a left-padded batch equals each sequence alone once positions come from the mask."""
    from trl.trainer.utils import add_fused_lm_head

    model, tok = load_model(model_dirs[arch])
    prepare_tokenizer(tok, model)
    add_fused_lm_head(model)  # what GRPOTrainer does to the policy
    without = padded_vs_alone_error(model.eval(), tok)
    assert use_mask_positions(model)
    with_mask = padded_vs_alone_error(model, tok)
    print(f"\n{arch}: max |log p(padded) - log p(alone)| = {with_mask:.2e} with position ids from the mask, "
          f"{without:.2e} without")
    assert with_mask <= 1e-5
    if arch == "gpt2":  # learned absolute positions: TRL's scoring without position ids reads shifted prompts
        assert without > 1e-3


def _check_run(run_dir, architecture):
    manifest = read_manifest(run_dir)
    rows = read_rollouts(run_dir)
    assert manifest.status == "finished" and manifest.model["architecture"] == architecture
    train_rows, eval_rows = rows[rows.phase == "train"], rows[rows.phase == "eval"]
    assert sorted(train_rows.step.unique()) == list(range(10)) and len(train_rows) == 10 * 2 * 4
    assert sorted(eval_rows.step.unique()) == [0, 10]
    assert rows.reward.between(0, 1).all() and manifest.rows_written == len(rows)
    assert rows.rs_truth.equals(rows.note_inserted)  # the digit-map family's ground truth: the note was inserted
    assert "pattern" in manifest.organisms["classifier_accuracy"]["classifiers"]
    return manifest, rows


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_ten_step_run_from_a_user_model(model_dirs, tmp_path, arch):
    seen = {}

    def hook(recorder, trainer):  # the policy GRPO trains takes its position ids from the mask
        seen["hooked"] = getattr(trainer.model.base_model, "_physrl_mask_positions", False)

    run = train(OrganismConfig(**RUN, model_dir=str(model_dirs[arch])), tmp_path / "run", log=lambda *a: None,
                recorder_hook=hook)
    manifest, rows = _check_run(run, {"llama": "LlamaForCausalLM", "gpt_neox": "GPTNeoXForCausalLM"}[arch])
    assert seen["hooked"] and manifest.organisms["stage1"]["cache"] == "user model"
    changes = manifest.organisms["tokenizer"]["changes"]
    if arch == "gpt_neox":  # trained here without a pad token, padding on the right
        assert any("no pad token" in c for c in changes) and any("padding_side = 'left'" in c for c in changes)
        assert not rows.completion.str.contains("\u2581").any()  # Metaspace pieces decode to plain words
    else:  # has a pad token; transformers 5 does not save padding_side, so every loaded tokenizer pads right
        assert len(changes) == 1 and "padding_side = 'left'" in changes[0]
    saved = json.loads((run / "model_init" / "tokenizer_config.json").read_text())
    user = json.loads((model_dirs[arch] / "tokenizer_config.json").read_text())
    assert saved["pad_token"] == ("<|endoftext|>" if arch == "gpt_neox" else "<pad>")  # the run's copy is fixed,
    assert ("pad_token" in user) == (arch == "llama")  # the user's directory is not


def test_ten_step_gpt2_run_through_the_command_line(model_dirs, tmp_path, capsys):
    """``physrl organisms train --model DIR``: a GPT-2 without pad token, padding on the right, trains and logs."""
    config = tmp_path / "run.json"
    config.write_text(json.dumps({k: v for k, v in RUN.items() if k != "progress"}))
    code = organisms_main(["train", "--out", str(tmp_path / "run"), "--config", str(config), "--model",
                           str(model_dirs["gpt2"]), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "no pad token" in out and "padding_side = 'left'" in out  # said in the log ...
    manifest, _ = _check_run(tmp_path / "run", "GPT2LMHeadModel")
    record = manifest.organisms["tokenizer"]  # ... and in the manifest
    assert record["pad_token"] == EOS and record["padding_side"] == "left" and len(record["changes"]) == 3


def test_tokenizer_that_cannot_express_the_family_is_refused(tmp_path, capsys):
    """GPT-2's byte-level split cuts ``e0`` into two tokens: refused before anything is written, naming the words."""
    tok = _sentencepiece_bpe(regex_split=True)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                       eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    capsys.readouterr()
    code = organisms_main(["train", "--out", str(tmp_path / "run"), "--model", str(tmp_path / "m"), "--n-envs", "2",
                           "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "'e0'" in err and "'e1'" in err and "model_dir" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    assert organisms_main(["train", "--out", str(tmp_path / "run"), "--model", str(tmp_path / "nothing")]) == 2
    assert "config.json" in capsys.readouterr().err
