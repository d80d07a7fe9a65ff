"""The one entry point that trains an organism run, whichever trainer its config names.

``config.trainer`` picks the trainer (docs/README.md: a new trainer is a module beside the TRL one behind this
interface): ``"trl"`` (:mod:`organisms._train`, one run through TRL's ``GRPOTrainer``) or ``"population"``
(:mod:`organisms._population`, a population of one). Both write the same log contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ._config import OrganismConfig


def train(config: OrganismConfig, out_dir: str | Path, resume: bool = False, *,
          log: Callable[..., None] = print, **options) -> Path:
    """Train one organism run with the trainer its config names; returns the run directory.

    Parameters, returns and errors are those of :func:`organisms._train.train` (the TRL trainer) or, for
    ``config.trainer == "population"``, of :func:`organisms._population.train_population` for one member.
    ``options`` (e.g. ``recorder_hook``) go to the TRL trainer; the population trainer takes none.

    Raises
    ------
    TypeError
        ``options`` given for a population run.
    """
    if config.trainer == "population":
        from ._population import train_population

        if options:
            raise TypeError(f"the population trainer takes no {sorted(options)}")

        return train_population([config], [out_dir], resume=resume, log=log)[0]
    from ._train import train as train_trl

    return train_trl(config, out_dir, resume, log=log, **options)
