"""Error types raised by core. Each message names the file (or object) and the fix."""
from __future__ import annotations


class ScaleError(Exception):
    """Base class of every error core raises on purpose."""


class MediaError(ScaleError):
    """A media or table file could not be used: corrupt, truncated, empty, wrong format or too big."""

    def __init__(self, path: object, problem: str, fix: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        msg = f"{self.path}: {problem}"
        if fix:
            msg += f" Fix: {fix}"
        super().__init__(msg)


class RecordError(ScaleError):
    """A product record or manifest line is unusable (for example: no usable modality)."""


class CheckpointError(ScaleError):
    """A checkpoint is missing, corrupt, or does not match the model config."""


class CacheError(ScaleError):
    """The feature cache is missing, corrupt or was built with other backbones."""
