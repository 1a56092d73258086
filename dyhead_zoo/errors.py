"""The project's own error types: the ``dyhead-zoo`` command turns each into one line.

Subclass :class:`DyHeadZooError` (together with the built-in type a caller would expect, such
as ``ValueError`` or ``OSError``) for any error whose message tells the user what to do: the
command-line edge (``dyhead_zoo.cli.main.main``) prints ``dyhead-zoo: error: <message>`` for it
and exits non-zero, without a traceback unless ``--debug`` is given.
"""
from __future__ import annotations


class DyHeadZooError(Exception):
    """Base class of errors with a message meant for the user (the fix included)."""


class CheckpointError(DyHeadZooError, ValueError):
    """A checkpoint file cannot be used: unreadable, truncated, wrong dtypes or non-finite values."""


class EvaluationLockedError(DyHeadZooError, RuntimeError):
    """Another evaluation is writing the same detections file (its lock file is held)."""
