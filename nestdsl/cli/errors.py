"""How an exception that reaches the command line becomes a message and an exit code.

Exit codes: 0 ok; 2 bad input (spec diagnostics, a bad option, a bad data or checkpoint file, a
diverged run); 1 an internal error (`--traceback` shows the Python traceback).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from nestdsl.diagnostics import SpecError

EXIT_OK, EXIT_INTERNAL, EXIT_USER = 0, 1, 2
EXIT_SPEC = EXIT_USER


class UserError(Exception):
    """A problem with the command's input (not the spec text): one line, exit 2."""


def user_message(exc: BaseException) -> tuple[str, int]:
    """A one-line message for `exc` and the exit code: 2 for bad input, 1 for internal errors."""
    name = type(exc).__name__
    # Runtime error types that describe bad input carry `user_error = True`.
    if getattr(exc, "user_error", False) or name in ("DataError", "CheckpointError", "TrainingDiverged"):
        return str(exc), EXIT_USER
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"disk full: {exc.filename or ''} (the last good checkpoint is kept)", EXIT_USER
        if exc.errno in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
                         errno.EEXIST, errno.EROFS):
            return f"{exc.strerror}: {exc.filename}", EXIT_USER
    return f"{name}: {exc}", EXIT_INTERNAL


@contextmanager
def guard(traceback: bool, *, as_json: bool = False) -> Iterator[None]:
    """Map exceptions to exit codes: SpecError → 2 with diagnostics, anything else → 1."""
    try:
        yield
    except SpecError as e:
        if traceback:
            raise
        if as_json:
            print(e.to_json())
        else:
            print(e.render(), file=sys.stderr)
            n = len(e.diagnostics)
            print(f"{n} error{'s' if n != 1 else ''}", file=sys.stderr)
        raise typer.Exit(EXIT_SPEC) from None
    except UserError as e:
        if traceback:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(EXIT_SPEC) from None
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        if traceback:
            raise
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if traceback:
            raise
        message, code = user_message(e)
        print(f"error: {message}", file=sys.stderr)
        if code == EXIT_INTERNAL:
            print("(internal error; rerun with --traceback for details)", file=sys.stderr)
        raise typer.Exit(code) from None
