"""Tokenizer and tiny causal LM, built locally (nothing is downloaded), or a user's model loaded from disk.

The built-in model is a tiny Llama (rotary positions): docs/organisms.md
measured that GPT-2's learned absolute positions change last-token logits by
0.19 under left padding, rotary ones by ~4e-8, and GRPO scores completions
with left-padded forward passes. Any other causal LM (``--model DIR``) runs
too: :func:`prepare_policy` gives the run's copy of its tokenizer a pad token
and left padding, and makes every forward pass take its position ids from
the attention mask (TRL 1.16's GRPO scoring passes none, so an
absolute-position model would otherwise read left-padded prompts at shifted
positions).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .families.digit_map.words import EOS, PAD, SPECIALS, UNK, family_words


def build_tokenizer(words) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: pad id 0, eos 1, unk 2, then ``words`` in order; left padding (for generation).

    ``words`` is a family's word list (:meth:`EnvironmentFamily.words`), or an
    integer K: the digit-map family's words for K environments.
    """
    if isinstance(words, int):
        words = family_words(words)
    vocab = {w: i for i, w in enumerate(SPECIALS + [w for w in dict.fromkeys(words) if w not in SPECIALS])}
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


def load_tokenizer(model_dir: str | Path):
    """The tokenizer saved in ``model_dir``, as it was saved (never downloads).

    ``AutoTokenizer``, except that a tokenizer saved as the generic fast class
    (``tokenizer_class`` ``TokenizersBackend`` / ``PreTrainedTokenizerFast``,
    e.g. a word-level tokenizer built with the ``tokenizers`` library) is
    loaded as that class: transformers 5's ``AutoTokenizer`` would otherwise
    pick the model type's own class (e.g. ``Qwen2Tokenizer``), which rebuilds
    the pre-tokenizer and so changes how the family's words are split.
    """
    import json

    path = Path(model_dir) / "tokenizer_config.json"
    try:
        saved_class = json.loads(path.read_text()).get("tokenizer_class") if path.exists() else None
    except (json.JSONDecodeError, AttributeError):
        saved_class = None
    if saved_class in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return PreTrainedTokenizerFast.from_pretrained(model_dir, local_files_only=True)
    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def load_model(model_dir: str | Path, device: torch.device | str = "cpu", left_padding: bool = True):
    """Load ``(model, tokenizer)`` saved with ``save_pretrained`` from a local directory (never downloads).

    Any causal LM transformers can load (``AutoModelForCausalLM``) and its
    tokenizer (:func:`load_tokenizer`). The tokenizer is set to left padding
    unless ``left_padding`` is False (a user's tokenizer, which
    :func:`prepare_tokenizer` then checks and records).

    Raises
    ------
    ValueError
        Not a directory, or no model / tokenizer in it (naming the field ``model_dir``).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"config field 'model_dir' = {str(model_dir)!r}: not a local directory")
    try:
        tokenizer = load_tokenizer(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).to(device)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"config field 'model_dir' = {str(model_dir)!r}: cannot load a causal LM and its tokenizer "
                         f"written with save_pretrained ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if left_padding:
        tokenizer.padding_side = "left"
    return model, tokenizer


def prepare_tokenizer(tokenizer, model=None) -> list[str]:
    """Give the run's copy of a user's tokenizer what generation and TRL need; returns what was changed.

    A tokenizer without a pad token gets its eos token as pad token (TRL
    builds masks from lengths, so pads equal to eos are never read as an
    end); one that pads on the right is set to pad on the left (prompts are
    left-padded for generation). The model's ``config.pad_token_id`` is set
    to match when it is unset. Each change is returned as a sentence for the
    run's log and manifest.

    Raises
    ------
    ValueError
        The tokenizer has neither a pad nor an eos token.
    """
    changes = []
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("config field 'model_dir': the tokenizer has neither a pad token nor an eos token; "
                             "give it one (tokenizer.add_special_tokens) and resize the model's embeddings")
        tokenizer.pad_token = tokenizer.eos_token
        changes.append(f"tokenizer had no pad token: set pad_token = eos_token {tokenizer.eos_token!r} "
                       f"(id {tokenizer.pad_token_id}) on the run's copy")
    if getattr(tokenizer, "padding_side", "left") != "left":
        changes.append(f"tokenizer padded on the {tokenizer.padding_side}: set padding_side = 'left' on the run's "
                       "copy (prompts are left-padded for generation)")
        tokenizer.padding_side = "left"
    if tokenizer.eos_token_id is None:
        raise ValueError("config field 'model_dir': the tokenizer has no eos token (completions end with one)")
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
        changes.append(f"model config had no pad_token_id: set to {tokenizer.pad_token_id} on the run's copy")
    return changes


def _mask_positions_hook(module, args, kwargs):
    """Forward pre-hook: position ids from the attention mask when the caller gave none (:func:`use_mask_positions`)."""
    sig = _SIGNATURES.get(type(module))
    if sig is None:
        sig = _SIGNATURES[type(module)] = inspect.signature(type(module).forward)
    try:
        bound = sig.bind_partial(module, *args, **kwargs)
    except TypeError:  # a call the signature cannot place: leave it to the model
        return None
    a = bound.arguments
    mask = a.get("attention_mask")
    if a.get("position_ids") is not None or not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    ref = a.get("input_ids") if a.get("input_ids") is not None else a.get("inputs_embeds")
    if ref is None:
        return None
    length = ref.shape[1]
    positions = (mask.long().cumsum(-1) - 1).clamp_(min=0)[:, -length:]
    at = list(sig.parameters).index("position_ids") - 1  # its place among the positional args (after self)
    if len(args) > at:
        return (*args[:at], positions, *args[at + 1:]), kwargs
    return args, {**kwargs, "position_ids": positions}


_SIGNATURES: dict[type, inspect.Signature] = {}


def use_mask_positions(model) -> bool:
    """Make every forward pass of ``model`` take position ids from the attention mask when none are given.

    Installs a forward pre-hook (``register_forward_pre_hook(with_kwargs=True)``)
    on the model's backbone (``model.base_model``: the module both the
    model's own forward and TRL's fused log-prob head call) that sets
    ``position_ids = cumsum(attention_mask) - 1`` (clamped at 0; the last
    ``input_ids.shape[1]`` columns when a cache holds earlier tokens)
    whenever a call passes an attention mask and no position ids. TRL 1.16's
    GRPO scoring (``_get_per_token_logps_and_entropies``) passes only
    ``input_ids`` and ``attention_mask`` for prompts padded on the left, so
    models with learned absolute positions (GPT-2) otherwise score every
    left-padded prompt at shifted positions; rotary models change by float
    rounding only. Calls that pass position ids (the rollout decoder) are
    untouched. Idempotent; returns False when the backbone takes no
    ``position_ids`` (nothing installed).
    """
    backbone = getattr(model, "base_model", model)
    if getattr(backbone, "_physrl_mask_positions", False):
        return True
    if "position_ids" not in inspect.signature(type(backbone).forward).parameters:
        return False
    backbone.register_forward_pre_hook(_mask_positions_hook, with_kwargs=True)
    backbone._physrl_mask_positions = True
    return True


def n_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
