"""Ground-floor helpers every room shares, none of them science: lazy package exports (:mod:`.lazy`), TOML on
every Python (:mod:`.toml`) and the one command-line behaviour of every ``physrl`` command (:mod:`.command_line`).

Each module here imports nothing of physrl, so ``sim``, ``fitting`` and ``organisms`` can use them without
reaching up into the experiment or the CLI. Owned by the ground floor, beside the log contract.

Room: contract; may import: nothing of the project but its own room.
"""
