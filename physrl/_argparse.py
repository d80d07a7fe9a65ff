"""One argparse behaviour for every ``physrl`` command: a usage error is one line on stderr, exit code 2.

argparse's own ``error`` prints the usage block and then the message (several
lines). Each package's ``cli.py`` builds its parser from :class:`ArgumentParser`
(subparsers inherit it), so a mistake on the command line reads the same
everywhere: ``physrl organisms train: error: ... (see --help)``. A leaf module:
it imports nothing of physrl.
"""

from __future__ import annotations

import argparse


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line and exit with code 2."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
