"""physrl: the physics of RL, as one import namespace for a house of six rooms.

Ground to roof (docs/README.md, "The house"): the log contract (``physrl.contract``, with the shared helpers of
``physrl._util``) -> ``physrl.sim`` (the toy ODE) -> ``physrl.fitting`` (reads logs, fits the ODE) ->
``physrl.organisms`` (tiny LMs trained with GRPO, writing logs) -> ``physrl.experiment`` (a diversity
experiment end to end: plan, train, fit & freeze, analyse, report) -> ``physrl.cli`` (the ``physrl``
command). A module imports only from its own room or a room below it (tests/test_house.py). This
``__init__`` is the bare namespace: it imports nothing, so importing any room starts no other.

Room: contract; may import: nothing of the project but its own room.
"""

__version__ = "0.1.0"
