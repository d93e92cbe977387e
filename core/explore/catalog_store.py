"""A memory-mapped embedding store for catalogs too large to hold twice in RAM (a million products).

A store is one folder:

    embeddings.npy   (N, D) float16 or float32, opened with np.load(mmap_mode="r")
    ids.txt          N lines, one product id each (UTF-8)
    categories.txt   N lines, the product's category ("" when unknown)
    store.json       {"version", "rows", "dim", "dtype"}: written last, so a folder without it is unfinished

    with StoreWriter("catalogs/big", dim=384) as w:      # rows are appended chunk by chunk
        for X, ids, cats in chunks:
            w.append(X, ids, cats)
    store = EmbeddingStore.open("catalogs/big")           # store.X is a read-only memmap

The writer streams each chunk to disk, so memory holds one chunk, never the whole matrix. Everything
is written in a sibling temporary folder that replaces the target only once complete: a crash or an
error leaves the previous store (or nothing) in place, never a half-written one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import ScaleError

FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
_HEADER_BYTES = 128  # fixed .npy header, rewritten with the final row count on close (64-byte aligned)


@contextmanager
def atomic_dir(target: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it becomes `target` (replacing an
    old one only after the new one is complete); on any error it is deleted and `target` is untouched."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise ScaleError(f"{target} already exists. Fix: pass overwrite=True or choose another folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():  # a folder cannot be os.replace'd onto a non-empty one: move the old one aside
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _npy_header(dtype: np.dtype, rows: int, dim: int) -> bytes:
    """A .npy v1.0 header of exactly _HEADER_BYTES bytes (spaces pad the dict, as numpy itself does)."""
    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, dim)}
    text = repr(d).encode("latin1")
    pad = _HEADER_BYTES - 10 - len(text) - 1
    if pad < 0:
        raise ScaleError(f"shape ({rows}, {dim}) does not fit the store's .npy header. Fix: use fewer columns.")
    return b"\x93NUMPY\x01\x00" + np.uint16(_HEADER_BYTES - 10).tobytes() + text + b" " * pad + b"\n"


def _clean_ids(values: Sequence, what: str, n: int, where: str) -> list[str]:
    out = [str(v) for v in values]
    if len(out) != n:
        raise ScaleError(f"{where}: {len(out)} {what} for {n} embedding rows. Fix: pass one {what[:-1]} per row.")
    bad = next((i for i, v in enumerate(out) if "\n" in v or "\r" in v), None)
    if bad is not None:
        raise ScaleError(f"{where}: {what[:-1]} of row {bad} ({out[bad]!r}) contains a line break. Fix: remove it.")
    return out


class StoreWriter:
    """Appends (rows, dim) chunks to a new store folder; `close()` (or leaving the `with`) publishes it.

    Rows are written as given (`dtype` float16 halves the disk and page cache; cosine search loses
    nothing visible at that precision). Non-finite values and duplicate ids are refused at the chunk
    that carries them."""

    def __init__(self, path: str | Path, dim: int, dtype: str = "float32", overwrite: bool = True) -> None:
        if dtype not in DTYPES:
            raise ScaleError(f"store dtype {dtype!r} unknown. Fix: use one of {DTYPES}.")
        if int(dim) <= 0:
            raise ScaleError(f"store dim must be positive, got {dim}.")
        self.path, self.dim, self.dtype = Path(path), int(dim), np.dtype(dtype)
        self.rows, self._chunks = 0, 0
        self._seen: set[str] = set()
        self._ctx = atomic_dir(self.path, overwrite=overwrite)
        self._tmp = self._ctx.__enter__()
        self._emb = open(self._tmp / "embeddings.npy", "wb")
        self._emb.write(_npy_header(self.dtype, 0, self.dim))  # placeholder; the row count is known on close
        self._ids = open(self._tmp / "ids.txt", "w", encoding="utf-8", newline="\n")
        self._cats = open(self._tmp / "categories.txt", "w", encoding="utf-8", newline="\n")
        self._open = True

    def append(self, X: np.ndarray, ids: Sequence, categories: Sequence | None = None) -> None:
        """Write one chunk: X (n, dim), n ids, and n categories (or None)."""
        if not self._open:
            raise ScaleError(f"{self.path}: the store writer is closed. Fix: open a new StoreWriter.")
        where = f"{self.path} (chunk {self._chunks}, rows {self.rows}+)"
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ScaleError(f"{where}: embeddings of shape {X.shape}, the store holds (n, {self.dim}). "
                             f"Fix: append 2-D chunks with {self.dim} columns.")
        if not np.isfinite(X).all():
            row = int(np.flatnonzero(~np.isfinite(X).all(1))[0])
            raise ScaleError(f"{where}: row {self.rows + row} has NaN or inf values. Fix: re-embed that product.")
        ids = _clean_ids(ids, "ids", len(X), where)
        cats = [""] * len(X) if categories is None else _clean_ids(categories, "categories", len(X), where)
        for i, pid in enumerate(ids):
            if pid in self._seen:
                raise ScaleError(f"{where}: id {pid!r} (row {self.rows + i}) was already written. "
                                 "Fix: give each product one row.")
            self._seen.add(pid)
        self._emb.write(np.ascontiguousarray(X, dtype=self.dtype).tobytes())
        self._ids.writelines(p + "\n" for p in ids)
        self._cats.writelines(c + "\n" for c in cats)
        self.rows += len(X)
        self._chunks += 1

    def close(self) -> Path:
        """Finish the files and publish the folder; returns its path."""
        if not self._open:
            return self.path
        self._open = False
        try:
            if self.rows == 0:
                raise ScaleError(f"{self.path}: no rows were appended. Fix: append at least one chunk.")
            self._emb.seek(0)
            self._emb.write(_npy_header(self.dtype, self.rows, self.dim))
            for f in (self._emb, self._ids, self._cats):
                f.flush()
                os.fsync(f.fileno())
                f.close()
            meta = {"version": FORMAT_VERSION, "rows": self.rows, "dim": self.dim, "dtype": self.dtype.name}
            (self._tmp / "store.json").write_text(json.dumps(meta, indent=1))
        except BaseException as e:
            self._abort(e)
            raise
        self._ctx.__exit__(None, None, None)
        return self.path

    def _abort(self, exc: BaseException) -> None:
        self._open = False
        for f in (self._emb, self._ids, self._cats):
            f.close()
        try:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
        except BaseException:
            pass  # atomic_dir re-raises the error it cleaned up after; the caller raises it anyway

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        elif self._open:
            self._abort(exc)


def _read_lines(path: Path, rows: int) -> np.ndarray:
    if not path.is_file():
        raise ScaleError(f"{path} is missing. Fix: rebuild the store with StoreWriter.")
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != rows:
        raise ScaleError(f"{path}: {len(lines)} lines for {rows} rows. Fix: rebuild the store with StoreWriter.")
    return np.array(lines, dtype=str) if lines else np.zeros(0, dtype=str)


@dataclass
class EmbeddingStore:
    """An opened store: X is a read-only memmap (pages are read on demand and shared between processes)."""

    path: Path
    X: np.ndarray  # (N, D) memmap, float16 or float32
    ids: np.ndarray  # (N,) str
    categories: np.ndarray  # (N,) str

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])

    @classmethod
    def open(cls, path: str | Path) -> "EmbeddingStore":
        path = Path(path)
        meta_path = path / "store.json"
        if not meta_path.is_file():
            raise ScaleError(f"{path} is not an embedding store (no store.json: missing or never finished). "
                             "Fix: write it with core.explore.catalog_store.StoreWriter.")
        try:
            meta = json.loads(meta_path.read_text())
            rows, dim, version = int(meta["rows"]), int(meta["dim"]), int(meta["version"])
        except (ValueError, KeyError, TypeError) as e:
            raise ScaleError(f"{meta_path} is unreadable ({e}). Fix: rebuild the store with StoreWriter.") from e
        if version != FORMAT_VERSION:
            raise ScaleError(f"{meta_path}: store format {version}, this code reads {FORMAT_VERSION}. "
                             "Fix: rebuild the store with this version's StoreWriter.")
        emb = path / "embeddings.npy"
        try:
            X = np.load(emb, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ScaleError(f"{emb} is unreadable ({e}). Fix: rebuild the store with StoreWriter.") from e
        if X.shape != (rows, dim):
            raise ScaleError(f"{emb} has shape {X.shape}, store.json says ({rows}, {dim}) (a truncated copy?). "
                             "Fix: copy the folder again or rebuild the store.")
        return cls(path, X, _read_lines(path / "ids.txt", rows), _read_lines(path / "categories.txt", rows))


def write_store(path: str | Path, X: np.ndarray, ids: Sequence, categories: Sequence | None = None,
                dtype: str = "float32", chunk: int = 65536) -> EmbeddingStore:
    """Write an in-memory (or memmapped) matrix as a store, `chunk` rows at a time, and open it."""
    X = np.asarray(X) if not isinstance(X, np.ndarray) else X  # a memmap stays a memmap
    if X.ndim != 2:
        raise ScaleError(f"{path}: embeddings must be 2-D (rows, dim), got shape {X.shape}. Fix: stack the rows.")
    with StoreWriter(path, dim=X.shape[1], dtype=dtype) as w:
        for s in range(0, len(X), chunk):
            w.append(X[s: s + chunk], ids[s: s + chunk], None if categories is None else categories[s: s + chunk])
    return EmbeddingStore.open(path)


def store_from_catalog(catalog, path: str | Path, kind: str = "fused", dtype: str = "float16") -> EmbeddingStore:
    """Write a `core.model.catalog.Catalog`'s embedding `kind` (its ids and categories beside) as a store."""
    return write_store(path, catalog.embedding(kind), list(catalog.ids), list(catalog.categories), dtype=dtype)
