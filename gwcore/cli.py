"""How every command line of the project ends: one line for a user's error, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from gwcore.errors import UserError


def run_command(
    func: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    user_errors: type[Exception] | tuple[type[Exception], ...] = UserError,
    debug: bool = False,
) -> int:
    """Run one subcommand and turn how it ended into an exit code.

    A user error (`user_errors`, by default every package's error base: gwcore.errors.UserError;
    or an OSError such as a permission or a full disk) prints
    `error: ...` on one line and returns 1; --debug re-raises it for the traceback. Ctrl-C is 130.
    A reader that left the pipe (`... | head`) ends the command quietly with 0.
    """
    try:
        return int(func(args))
    except user_errors as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Later writes (and the interpreter's final flush) go nowhere instead of failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
