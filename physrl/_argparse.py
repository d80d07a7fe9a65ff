"""One argparse behaviour for every ``physrl`` command: a usage error is one line on stderr, exit code 2.

argparse's own ``error`` prints the usage block and then the message (several
lines). Each package's ``cli.py`` builds its parser from :class:`ArgumentParser`
(subparsers inherit it), so a mistake on the command line reads the same
everywhere: ``physrl organisms train: error: ... (see --help)``. A leaf module:
it imports nothing of physrl.
"""

from __future__ import annotations

import argparse
from pathlib import Path


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line and exit with code 2."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def output_directory(value: str) -> Path:
    """argparse ``type`` of every ``--out``: a folder to create or reuse, never an existing file.

    Raises
    ------
    argparse.ArgumentTypeError
        If ``value`` names an existing file (argparse turns it into the one-line usage error).
    """
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a file, not a directory")
    return path
