"""Help text and verbosity shared by the ``spatialdreamer`` command and the ``pipelines`` jobs.

Light on purpose (standard library only): ``--help`` must answer before torch or Ray load.
"""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter", "add_verbose"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends each option's default to its help, unless
    the help already names it or there is nothing to show (``None``, ``False``, a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and default not in (None, False, argparse.SUPPRESS)
            and "(default" not in text.lower()
            and action.nargs != 0
        ):
            text += " (default: %(default)s)"
        return text


def add_verbose(parser: argparse.ArgumentParser, top_level: bool, text: str) -> None:
    """``-v/--verbose`` on ``parser``. A subcommand's copy defaults to SUPPRESS, so ``-v``
    counts wherever it is written: before the subcommand or after it."""
    default = False if top_level else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help=text)
