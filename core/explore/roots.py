"""The server folders the app may read ("roots"), what it finds in them, and the one check every path passes.

The app is served to people who must not browse the server: they pick checkpoints, catalogs and manifests
from lists of what lies under the roots, and any other path is refused with one message that says nothing
about whether it exists.

Roots: the repo's `checkpoints/`, the data folder `../shared/data` beside the repo when it exists, and every
folder in the env variable SCALE_ROOTS (separated by os.pathsep, ":" on Linux). Importable without Streamlit.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import ScaleError

REPO = Path(__file__).resolve().parents[2]
ROOTS_ENV = "SCALE_ROOTS"
REFUSED = ("That location is not available here. Fix: choose one of the listed entries; the server's "
           "administrator can add folders with the env variable SCALE_ROOTS.")
# Discovery walks this deep below a root and looks at this many entries at most: a root that is a large
# media folder must not stall every page render.
MAX_DEPTH = 4
MAX_ENTRIES = 50_000
MANIFEST_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt")

log = logging.getLogger(__name__)


class PathRefused(ScaleError):
    """A path outside the roots (or not a path at all). Its message is always REFUSED."""

    def __init__(self) -> None:
        super().__init__(REFUSED)


def default_roots(repo: Path = REPO) -> list[Path]:
    out = [repo / "checkpoints"]
    data = repo.parent / "shared" / "data"
    if data.is_dir():
        out.append(data)
    return out


def configured_roots(env: str | None = None, repo: Path = REPO) -> list[Path]:
    """The defaults plus SCALE_ROOTS (`env` overrides the variable), resolved; missing folders are dropped."""
    raw = os.environ.get(ROOTS_ENV, "") if env is None else env
    out: list[Path] = []
    for cand in [*default_roots(repo), *(Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip())]:
        try:
            r = cand.resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            log.warning("root %s does not exist: skipped", cand)
            continue
        if r.is_dir() and r not in out:
            out.append(r)
    return out


def _resolve(path: str | os.PathLike) -> Path:
    """Absolute, with symlinks and `..` resolved, so nothing reaches outside a root by its spelling."""
    if isinstance(path, str) and (not path.strip() or "\x00" in path):
        raise PathRefused()
    try:
        return Path(path).expanduser().resolve(strict=False)
    except (OSError, RuntimeError, ValueError, TypeError):
        raise PathRefused() from None


def is_allowed(path: str | os.PathLike, roots: Sequence[Path]) -> bool:
    try:
        allowed(path, roots)
        return True
    except PathRefused:
        return False


def allowed(path: str | os.PathLike, roots: Sequence[Path]) -> Path:
    """`path` resolved, if it lies in one of `roots` (resolved folders); else PathRefused (message REFUSED).

    The check looks at the resolved spelling only, never at whether the path exists, so the answer for a
    missing path and for an existing one outside the roots is the same."""
    p = _resolve(path)
    if any(p == r or p.is_relative_to(r) for r in roots):
        return p
    raise PathRefused()


def _walk(roots: Sequence[Path]) -> Iterable[tuple[Path, list[str], list[str]]]:
    seen = 0
    for root in roots:
        base_depth = len(root.parts)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(dirpath)
            seen += len(dirnames) + len(filenames)
            if seen > MAX_ENTRIES:
                log.warning("stopped looking under the roots after %d entries", MAX_ENTRIES)
                return
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
            if len(here.parts) - base_depth >= MAX_DEPTH:
                dirnames[:] = []
            yield here, dirnames, sorted(filenames)


def _inside(paths: Iterable[Path], roots: Sequence[Path]) -> list[Path]:
    """Resolved and de-duplicated; a symlinked file that points outside the roots is left out."""
    out: list[Path] = []
    for p in paths:
        try:
            r = allowed(p, roots)
        except PathRefused:
            continue
        if r not in out:
            out.append(r)
    return out


def find_checkpoints(roots: Sequence[Path]) -> list[Path]:
    """Folders holding config.json and model.safetensors."""
    return _inside((d for d, _, files in _walk(roots) if "config.json" in files and "model.safetensors" in files),
                   roots)


def find_catalogs(roots: Sequence[Path]) -> list[Path]:
    """Catalog embeddings: *.npz files."""
    return _inside((d / f for d, _, files in _walk(roots) for f in files if f.endswith(".npz")), roots)


def find_manifests(roots: Sequence[Path]) -> list[Path]:
    """Product manifests: files whose name holds "manifest" (manifest.jsonl, val_manifest.csv, ...).

    Other JSON-lines and CSV files under the roots (training logs, table attributes) are not offered."""
    return _inside((d / f for d, _, files in _walk(roots) for f in files
                    if "manifest" in f.lower() and f.lower().endswith(MANIFEST_SUFFIXES)), roots)


def label(path: str | os.PathLike, roots: Sequence[Path]) -> str:
    """What users see for a path: "<root folder name>/<path inside it>", never the server's absolute path."""
    try:
        p = allowed(path, roots)
    except PathRefused:
        return Path(str(path)).name or "?"
    root = max((r for r in roots if p == r or p.is_relative_to(r)), key=lambda r: len(r.parts))
    return (Path(root.name) / p.relative_to(root)).as_posix()


def scrub(text: str, roots: Sequence[Path], extra: Iterable[Path] = ()) -> str:
    """`text` with every root's absolute path written as its folder name (error messages name files by
    their label), and each `extra` folder (an upload folder) dropped."""
    for r in sorted(roots, key=lambda r: -len(str(r))):
        text = text.replace(str(r) + os.sep, r.name + "/").replace(str(r), r.name)
    for e in extra:
        text = text.replace(str(e) + os.sep, "").replace(str(e), "")
    return text
