"""Turn exceptions that reach the CLI into one-line messages and exit codes."""

from __future__ import annotations

import errno

EXIT_INTERNAL, EXIT_USER = 1, 2


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
