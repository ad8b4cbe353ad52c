"""The one error type of the data package, made without importing torch.

Every problem the user can fix (a missing folder, a truncated shard, an optional package that is
not installed) is the runtime's :class:`nestdsl.runtime.tasks.base.DataError`: the CLI prints its
message as one line and exits 2, and training, evaluation and ``nestdsl data`` share it. That
module imports torch (its batches are tensors), which costs seconds; ``nestdsl data info`` and
``prepare`` never need torch otherwise, so the class is imported only when an error is raised.
"""

from __future__ import annotations

__all__ = ["data_error", "missing_package"]


def data_error(message: str) -> Exception:
    """A ``DataError`` carrying ``message`` (one line, shown as is): ``raise data_error(...)``."""
    from nestdsl.runtime.tasks.base import DataError

    return DataError(message)


def missing_package(package: str, what: str) -> Exception:
    """The error for an optional package that ``what`` needs and that is not installed."""
    return data_error(f"{what} needs the optional '{package}' package: pip install 'nestdsl[data]'")
