"""The stage-1 cache: runs that share everything stage 1 depends on share one pretrained model.

Stage 1 (:func:`organisms.pretrain`) is a deterministic function of

* the family: K = ``n_family`` environments and ``family_seed``,
  ``input_length``, ``local_alphabet``, ``share_width``, ``note_reveal``
  (digit maps, notes) and ``b0`` (known map entries, input distribution);
* the knob targets ``p0``, ``a0``, ``b0`` (the demo mixture);
* the stage-1 schedule ``pretrain_steps``, ``pretrain_batch_size``,
  ``pretrain_lr`` and the run ``seed`` (model init and demo draws);
* the model (its transformers config, built from ``hidden_size``,
  ``n_layers``, ``n_heads`` and the family's vocabulary);
* the numerics: device type, torch threads, and the versions of torch,
  transformers, tokenizers and numpy (numpy's generator draws the demos);
* the stage-1 code itself (:data:`STAGE1_VERSION`, bumped when the demos,
  loss or schedule change).

Which environments are *trained* (``n_envs``) is not on the list: demos are
drawn uniformly over all K environments and the weights w are not used
(``test_stage1_does_not_depend_on_which_envs_are_trained``). So with a fixed
``family_size``, runs at every N of one (p0, seed) share one stage-1 model.

Entries are directories ``<cache>/<key>/`` (``save_pretrained`` model and
tokenizer plus ``stage1.json``: the key's ingredients, the loss curve and
the seconds it took). They are published by an atomic directory rename, so a
reader never sees half an entry; two workers racing on one key both end with
a valid model (the loser of the rename keeps its own, identical, model and
drops its copy). Where ``fcntl`` exists, a lock file per key makes the second
worker wait for the first instead of pretraining again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

#: version of stage 1's algorithm (demos, losses, schedule, model build); part of every cache key
STAGE1_VERSION = "1"

#: the config fields stage 1 reads (besides ``n_family``, the family size K)
STAGE1_FIELDS = ("seed", "family_seed", "input_length", "local_alphabet", "share_width", "note_reveal", "p0", "a0",
                 "b0", "pretrain_steps", "pretrain_batch_size", "pretrain_lr", "hidden_size", "n_layers", "n_heads")


def stage1_ingredients(config, model_config: dict[str, Any], device: str, threads: int, family=None) -> dict[str, Any]:
    """Everything the stage-1 model depends on, as JSON-able data (the cache key is its hash).

    Parameters
    ----------
    config : OrganismConfig
        The run's config; only :data:`STAGE1_FIELDS` and ``n_family`` are read.
    model_config : dict
        The freshly built model's transformers config (``model.config.to_dict()``).
    device : str
        Device type the model trains on (``cpu``, ``cuda``).
    threads : int
        torch intra-op threads (reductions may round differently with another count).
    family : EnvironmentFamily, optional
        The run's family. Any family but the built-in digit-map one adds its
        import path, ``version`` and ``env_options`` (its stage 1 is its own
        code); the digit-map family adds nothing (its keys are as before).
    """
    import numpy
    import tokenizers
    import torch
    import transformers

    out = {
        "stage1_version": STAGE1_VERSION,
        "config": {name: getattr(config, name) for name in STAGE1_FIELDS},
        "n_family": config.n_family,
        "model_config": model_config,
        "device": device,
        "threads": int(threads),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "numpy": numpy.__version__},
    }
    if config.env_family != "digit-map":
        out["env_family"] = {"name": config.env_family, "version": getattr(family, "version", None),
                             "options": config.env_options}
    return out


def stage1_key(ingredients: dict[str, Any]) -> str:
    """The cache key of :func:`stage1_ingredients`: 24 hex digits of the sha256 of its canonical JSON."""
    text = json.dumps(ingredients, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_dir(setting: str, run_dir: str | Path) -> Path | None:
    """The cache folder for config field ``stage1_cache``: ``auto`` -> ``<run_dir parent>/.stage1_cache``,
    ``off`` -> None (no cache), anything else -> that path."""
    if setting == "off":
        return None
    if setting == "auto":
        return Path(run_dir).resolve().parent / ".stage1_cache"
    return Path(setting).expanduser()


@dataclass
class Stage1Cache:
    """A folder of stage-1 models, one sub-folder per key (see the module docstring).

    Example
    -------
    >>> cache = Stage1Cache(Path("runs/.stage1_cache"))            # doctest: +SKIP
    >>> with cache.lock(key):                                      # doctest: +SKIP
    ...     entry = cache.lookup(key) or cache.publish(key, model, tokenizer, meta)
    """

    root: Path

    def entry(self, key: str) -> Path:
        """Folder of ``key``'s entry (it may not exist)."""
        return self.root / key

    def lookup(self, key: str) -> Path | None:
        """The entry's folder when it holds a complete model, else None."""
        path = self.entry(key)
        return path if (path / "stage1.json").exists() and (path / "config.json").exists() else None

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float = 3600.0) -> Iterator[None]:
        """Hold an exclusive lock on ``key`` (``fcntl.flock`` on ``.<key>.lock``) while computing its entry.

        Best effort: without ``fcntl`` or on a file system that refuses the
        lock, nothing is locked and the atomic rename in :meth:`publish`
        still keeps the cache valid (both workers then pretrain). Waits at
        most ``timeout`` seconds, then proceeds unlocked.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        path = self.root / f".{key}.lock"
        try:
            fh = open(path, "a+")
        except OSError:  # pragma: no cover - read-only cache folder
            yield
            return
        locked = False
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                except OSError:  # pragma: no cover - e.g. a file system without locks
                    break
            yield
        finally:
            if locked:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()

    def publish(self, key: str, model, tokenizer, meta: dict[str, Any]) -> Path:
        """Write ``model``/``tokenizer`` and ``meta`` (as ``stage1.json``) as ``key``'s entry; returns its folder.

        The entry is written to a temporary folder and renamed into place in
        one step. If another worker published the key meanwhile, its entry is
        kept (it holds the same model) and ours is discarded.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.entry(key)
        tmp = self.root / f".{key}.{uuid.uuid4().hex}.tmp"
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "stage1.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
            try:
                os.rename(tmp, final)  # atomic; fails if the entry exists (another worker won)
            except OSError:
                if self.lookup(key) is None:
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final
