"""A family's words as token ids: each word one token (:class:`WordCodec`), and the fast encode / decode of
prompts and completions for the organisms' word-level tokenizer.

A leaf: imports nothing of physrl (a family is anything with ``words()``).
"""

from __future__ import annotations


class WordCodec:
    """The family's words as token ids of a tokenizer: each word one token, as it appears after a space.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    words : sequence of str
        The family's words (:meth:`EnvironmentFamily.words`).

    Raises
    ------
    ValueError
        Some words are not one token that decodes back to the word (the
        message names them), or the words do not survive an encode/decode
        round trip.
    """

    def __init__(self, tokenizer, words):
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        words = list(dict.fromkeys(words))
        vocab = _word_vocab(tokenizer)
        ids, missing = {}, []
        for w in words:
            i = vocab.get(w) if vocab is not None else _single_token(tokenizer, w)
            if i is None:
                missing.append(w)
            else:
                ids[w] = i
        if missing:
            raise ValueError(f"the tokenizer cannot express the family's words {missing} (each must encode to one "
                             "token that decodes back to the word; add them with tokenizer.add_tokens(...) and "
                             "model.resize_token_embeddings(len(tokenizer)))")
        self._ids = ids
        back = tokenizer.decode([ids[w] for w in words], skip_special_tokens=False).split()
        if back != words:
            raise ValueError(f"the tokenizer does not round-trip the family's words: {words[:8]}... decode to "
                             f"{back[:8]}...")

    def id(self, word: str) -> int:
        """The token id of ``word``."""
        return self._ids[word]

    def ids(self, words) -> list[int]:
        """Token ids of ``words``, one per word."""
        return [self._ids[w] for w in words]


def _single_token(tokenizer, word: str) -> int | None:
    unk = tokenizer.unk_token_id
    for text in (" " + word, word):
        enc = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(enc) == 1 and enc[0] != unk and tokenizer.decode(enc, skip_special_tokens=False).strip() == word:
            return int(enc[0])
    return None


def word_codec(tokenizer, family) -> WordCodec:
    """The :class:`WordCodec` of ``family``'s words for ``tokenizer`` (cached on the tokenizer object)."""
    words = tuple(family.words())
    cache = getattr(tokenizer, "_physrl_codecs", None)
    if cache is None:
        cache = {}
        try:
            tokenizer._physrl_codecs = cache
        except AttributeError:  # pragma: no cover - a tokenizer refusing attributes is simply not cached
            pass
    if words not in cache:
        cache[words] = WordCodec(tokenizer, words)
    return cache[words]


def _word_vocab(tokenizer) -> dict[str, int] | None:
    """The word -> id map when ``tokenizer`` is a plain word-level one (each whitespace-separated word one
    token, no normaliser), else None. Cached on the tokenizer object."""
    cached = getattr(tokenizer, "_physrl_word_vocab", False)
    if cached is not False:
        return cached
    vocab = None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.model).__name__ == "WordLevel" and backend.normalizer is None and \
            type(backend.pre_tokenizer).__name__ == "WhitespaceSplit":
        vocab = dict(tokenizer.get_vocab())
    try:
        tokenizer._physrl_word_vocab = vocab
    except AttributeError:  # pragma: no cover - a tokenizer refusing attributes is simply not cached
        pass
    return vocab


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of ``texts`` without special tokens, as ``tokenizer(texts, add_special_tokens=False)`` gives them.

    For a plain word-level tokenizer (the organisms' own) the ids are looked up
    word by word (unknown words -> the unk id), ~20x faster for these short
    texts; any other tokenizer is called.
    """
    vocab = _word_vocab(tokenizer)
    if vocab is None or tokenizer.unk_token_id is None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    return [[vocab.get(w, unk) for w in text.split()] for text in texts]


def decode(tokenizer, completion_ids: list[list[int]]) -> list[str]:
    """Completion texts as TRL decodes them (special tokens dropped)."""
    return tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
