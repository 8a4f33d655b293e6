"""What every deeprec command shares: one-line errors with exit code 2 (bad input) or 1 (a
failed torchrun peer), and --debug."""

from __future__ import annotations

import argparse
import difflib
import functools
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import deeprec
from deeprec.errors import ConfigError, DeeprecError, PeerError, PrecisionWarning

# Errors that mean "bad input", reported as one line (the traceback only with --debug).
USER_ERRORS = (DeeprecError,)


class UsageError(ConfigError):
    """A command-line value that parsed but cannot be used."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, 'prog: error: ...' (no usage block: --help shows
    it), naming the nearest known flag for a mistyped one, even where a required flag is
    missing because of the typo."""

    _given: tuple[str, ...] = ()  # the arguments of the parse under way

    def parse_known_args(self, args=None, namespace=None):
        self._given = tuple(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        known = [flag for action in self._actions for flag in action.option_strings]
        unknown = [
            arg for arg in self._given
            if arg.startswith("-") and arg not in ("-", "--") and not arg[1:2].isdigit()
            and not any(flag.startswith(arg.split("=", 1)[0]) for flag in known)
        ]  # fmt: skip
        if unknown:
            hints = [
                f"{arg}: did you mean {near[0]}?"
                for arg in unknown
                if (near := difflib.get_close_matches(arg.split("=", 1)[0], known, n=1))
            ]
            message = f"unrecognized arguments: {' '.join(unknown)}"
            if hints:
                message += f" ({'; '.join(hints)})"
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def writable_folder(path: Path, flag: str) -> None:
    """Make sure ``path`` is (or can become) a folder we can write, before any work: a
    one-line UsageError otherwise (a file in the way, no permission, a read-only place)."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".deeprec-write-check-"):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write there ({exc.strerror})") from None


def writable_file(path: Path, flag: str) -> None:
    """Make sure a file can be written at ``path`` (its folder writable, not a folder)."""
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder, not a file")
    writable_folder(path.parent if str(path.parent) else Path("."), flag)


def add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def _one_line(prog: str, shown, message, category, *args, **kwargs) -> None:
    if issubclass(category, PrecisionWarning):
        print(f"{prog}: warning: {message}", file=sys.stderr)
    else:
        shown(message, category, *args, **kwargs)


def run(
    main: Callable[[argparse.Namespace], int],
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
) -> int:
    """Parse argv and call main(args), turning input errors into 'prog: error: ...' and exit 2,
    and deeprec's advice (a PrecisionWarning) into one 'prog: warning: ...' line."""
    if deeprec.interrupted_while_starting():  # a Ctrl-C that an import swallowed
        print(f"{parser.prog}: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", PrecisionWarning)
            shown = warnings.showwarning
            warnings.showwarning = functools.partial(_one_line, parser.prog, shown)
            return main(args)
    except USER_ERRORS as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except PeerError as exc:  # a torchrun peer died, or did not answer in time
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # a run's message says what was saved and how to go on
        detail = f": {exc}" if str(exc) else ""
        print(f"{parser.prog}: interrupted{detail}", file=sys.stderr)
        return 130
