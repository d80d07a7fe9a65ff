"""Adapters that write the rollout-log contract (docs/rollouts.md) from other RL frameworks' runs.

- :mod:`physrl.integrations.trl`: :func:`~physrl.integrations.trl.log_rollouts` attaches to a user's
  ``trl.GRPOTrainer`` and logs every rollout, so ``physrl fit`` can fit the run.

An integration writes logs, so it sits at the organisms' level of the house: it imports
:mod:`physrl.contract` and :mod:`physrl.organisms` (the classifiers), nothing above.

Room: organisms; may import: contract, sim, fitting and its own room.
"""
