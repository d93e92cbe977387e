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


def write_problem(path: object, error: OSError) -> str:
    """'could not write PATH: No space left on device (0.2 GB free there)' for an OSError from a write. The
    free space is read on the nearest existing folder, since a full disk is the usual cause."""
    import shutil
    from pathlib import Path

    probe = Path(str(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        b = shutil.disk_usage(probe).free
        free = f" ({b / 2**30:.1f} GB free there)" if b >= 2**30 else f" ({b / 2**20:.0f} MB free there)"
    except OSError:
        free = ""
    return f"could not write {path}: {error.strerror or error}{free}"
