"""Tokenizer and tiny causal LM, built locally (nothing is downloaded).

The model is a tiny Llama (rotary positions): docs/organisms.md measured that
GPT-2's learned absolute positions change last-token logits by 0.19 under
left padding, rotary ones by ~4e-8, and GRPO scores completions with
left-padded forward passes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ._envs import EOS, PAD, UNK, vocabulary


def build_tokenizer(n_family: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the family's vocabulary; left padding (for generation)."""
    vocab = {w: i for i, w in enumerate(vocabulary(n_family))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    fast.padding_side = "left"
    return fast


def build_model(tokenizer: PreTrainedTokenizerFast, hidden_size: int = 64, n_layers: int = 2, n_heads: int = 4,
                seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama (rotary positions, tied embeddings) for ``tokenizer``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_heads,
        max_position_embeddings=128, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_model(model_dir: str | Path, device: torch.device | str = "cpu"):
    """Load ``(model, tokenizer)`` saved with ``save_pretrained`` from a local directory (never downloads)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"config field 'model_dir' = {str(model_dir)!r}: not a local directory")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir, local_files_only=True)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).to(device)
    return model, tokenizer


def n_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
