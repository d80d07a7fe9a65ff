"""One argparse behaviour for every ``physrl`` command: a usage error is one line on stderr, exit code 2.

argparse's own ``error`` prints the usage block and then the message (several
lines). Each package's ``cli.py`` builds its parser from :class:`ArgumentParser`
(subparsers inherit it), so a mistake on the command line reads the same
everywhere: ``physrl organisms train: error: ... (see --help)``. A leaf module:
it imports nothing of physrl.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line and exit with code 2."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def output_directory(value: str) -> Path:
    """argparse ``type`` of every ``--out``: a folder to create or reuse, never an existing file.

    Checked before anything runs, so a long job never ends in a traceback at its first write: the
    path is not an existing file, nothing on its way is a file, and the closest existing folder on
    its way accepts a new entry (probed by creating and removing a temporary folder in it, since
    permission bits say nothing for root or on read-only mounts). Nothing is left behind.

    Raises
    ------
    argparse.ArgumentTypeError
        If ``value`` names an existing file, lies inside a file, or cannot be created or written
        (argparse turns it into the one-line usage error).
    """
    path = Path(value)
    try:
        if path.exists() and not path.is_dir():
            raise argparse.ArgumentTypeError(f"{value} is a file, not a directory")
        existing = path
        while not existing.exists():  # the closest existing ancestor ('.' or '/' at worst)
            existing = existing.parent
        if not existing.is_dir():
            raise argparse.ArgumentTypeError(f"cannot create {value}: {existing} is a file, not a directory")
    except OSError as exc:  # e.g. a parent folder that cannot be listed
        raise argparse.ArgumentTypeError(f"cannot use {value}: {exc.strerror or exc}") from None
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".physrl-write-check-", dir=existing))
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write {value}: no new entry can be made in {existing} "
                                         f"({exc.strerror or exc})") from None
    return path
