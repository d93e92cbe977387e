"""Nearest catalog products by cosine through a FAISS index, exact or approximate.

Rows are L2-normalized and searched by inner product, which is then the cosine similarity. Kinds:

    flat   IndexFlatIP: exact, every query reads every row. `auto` picks it below 50,000 rows.
    ivf    IndexIVFFlat: k-means cells (nlist about sqrt(N)); a query reads its `nprobe` nearest cells.
    hnsw   IndexHNSWFlat: a neighbour graph; `ef_search` sets how wide a query walks it.

    index = AnnIndex.build(store.X, store.ids)            # X (N, D) array or memmap, read in chunks
    index = catalog_index(Catalog.load(path), "fused")      # what a page calls
    scores, rows = index.search(Q, k=10)                   # (M, k) cosine, (M, k) row numbers
    index.ids[rows]                                        # the product ids
    index.save("catalogs/big/ann"); AnnIndex.load("catalogs/big/ann")

`build` tunes nprobe / ef_search for `target_recall`: one step (x2) beyond the smallest value whose
recall@k on sampled catalog rows (their own row left out) against exact search reaches it.
After `build` / `load` the index is read-only: `search` never changes it (a per-call nprobe goes
through FAISS's SearchParameters), and FAISS's CPU indexes allow concurrent searches, so threads
(Streamlit sessions sharing one cached index) can search it at once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from .catalog_store import atomic_dir
from ..errors import ScaleError
from ..eval.metrics import l2n

FORMAT_VERSION = 1
KINDS = ("auto", "flat", "ivf", "hnsw")
EXACT_BELOW = 50_000  # `auto`: exact search up to here (a flat scan of 50k x 384 is a few ms per query)
CHUNK = 65_536  # rows converted to normalized float32 at a time, so a memmapped catalog is never copied whole


def _unit_f32(X: np.ndarray, what: str = "catalog embeddings", start: int = 0,
              rows: np.ndarray | None = None) -> np.ndarray:
    """Rows as contiguous, L2-normalized float32 (zero rows stay zero). NaN / inf rows are refused here,
    before normalizing, which would turn them silently into zero rows."""
    X = np.asarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        bad = int(np.flatnonzero(~np.isfinite(X).reshape(len(X), -1).all(1))[0])
        row = start + bad if rows is None else int(rows[bad])  # `rows`: the catalog rows X was gathered from
        raise ScaleError(f"{what}: row {row} has NaN or inf values. Fix: re-embed that product.")
    return np.ascontiguousarray(l2n(X))


def exact_search(X: np.ndarray, Q: np.ndarray, k: int, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k cosine of each row of Q (M, D) over X (N, D), `chunk` rows of X at a time:
    (M, k) float32 scores and int64 rows, best first (ties: lower row first). The ground truth of recall."""
    Qn = _unit_f32(np.atleast_2d(Q))
    k = min(int(k), len(X))
    best_s = np.full((len(Qn), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(Qn), 0), dtype=np.int64)
    for s in range(0, len(X), chunk):
        S = Qn @ _unit_f32(X[s: s + chunk]).T
        kk = min(k, S.shape[1])
        if kk < S.shape[1]:
            part = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
        else:
            part = np.tile(np.arange(S.shape[1]), (len(S), 1))
        cand_s = np.concatenate([best_s, np.take_along_axis(S, part, 1)], 1)
        cand_i = np.concatenate([best_i, part + s], 1)
        order = np.lexsort((cand_i, -cand_s), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_s.astype(np.float32), best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of `truth` (M, k) that appears in the same row of `found` (M, k')."""
    k = truth.shape[1]
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def default_nlist(n: int) -> int:
    """IVF cells: the power of two nearest sqrt(N), at most N/39 (FAISS wants >= 39 training rows per cell)."""
    return int(max(1, min(2 ** round(np.log2(max(np.sqrt(n), 1))), n // 39)))


@dataclass
class AnnIndex:
    index: faiss.Index
    ids: np.ndarray  # (N,) str, row i of the index is product ids[i]
    kind: str  # "flat" | "ivf" | "hnsw"
    params: dict = field(default_factory=dict)  # nlist, nprobe, m, ef_search, tuned_recall, ...

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @classmethod
    def build(cls, X: np.ndarray, ids: Sequence | None = None, kind: str = "auto", *, nlist: int | None = None,
              nprobe: int | None = None, m: int = 32, ef_construction: int = 80, ef_search: int | None = None,
              target_recall: float = 0.95, tune_k: int = 10, tune_queries: int = 200, seed: int = 0,
              chunk: int = CHUNK) -> "AnnIndex":
        """Index the rows of X (N, D), any float dtype, in memory or memmapped. `ids` default to "0".."N-1".
        nprobe / ef_search given: used as is; None: tuned for `target_recall` (recall@`tune_k`)."""
        if kind not in KINDS:
            raise ScaleError(f"index kind {kind!r} unknown. Fix: use one of {KINDS}.")
        if not hasattr(X, "shape") or len(X.shape) != 2:
            raise ScaleError(f"catalog embeddings must be a 2-D array (rows, dim), got {getattr(X, 'shape', type(X))}. "
                             "Fix: pass Catalog.embedding(kind) or EmbeddingStore.X.")
        n, d = int(X.shape[0]), int(X.shape[1])
        if n == 0 or d == 0:
            raise ScaleError(f"the catalog is empty ({n} rows of {d} dims): nothing to index. "
                             "Fix: embed at least one product first.")
        ids = np.arange(n).astype(str) if ids is None else np.asarray([str(i) for i in ids], dtype=str)
        if len(ids) != n:
            raise ScaleError(f"{len(ids)} ids for {n} embedding rows. Fix: pass one id per row.")
        kind = ("flat" if n < EXACT_BELOW else "ivf") if kind == "auto" else kind
        params: dict = {"rows": n, "dim": d}
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "ivf":
            nlist = default_nlist(n) if nlist is None else int(nlist)
            if not 1 <= nlist <= n:
                raise ScaleError(f"nlist={nlist} cells for {n} rows. "
                                 f"Fix: use 1 <= nlist <= {n} (default: about sqrt(N)).")
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.cp.niter = 20
            train = np.sort(np.random.default_rng(seed).choice(n, size=min(n, 64 * nlist), replace=False))
            sample = _unit_f32(X[train], rows=train)
            index.train(sample)
            del sample
            params["nlist"] = nlist
        else:
            index = faiss.IndexHNSWFlat(d, int(m), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(ef_construction)
            params.update(m=int(m), ef_construction=int(ef_construction))
        for s in range(0, n, chunk):
            index.add(_unit_f32(X[s: s + chunk], start=s))
        if kind == "ivf":
            index.make_direct_map()  # lets `neighbours` read a product's own row back
        out = cls(index, ids, kind, params)
        if kind != "flat":
            out._tune(X, nprobe if kind == "ivf" else ef_search, target_recall, tune_k, tune_queries, seed, chunk)
        return out

    def _tune(self, X: np.ndarray, fixed: int | None, target: float, k: int, queries: int, seed: int,
              chunk: int) -> None:
        """Set nprobe (ivf) / efSearch (hnsw): `fixed`, or the smallest that reaches `target` recall@k."""
        name = "nprobe" if self.kind == "ivf" else "ef_search"
        if fixed is None:
            n = len(self)
            rows = np.sort(np.random.default_rng(seed + 1).choice(n, size=min(n, queries), replace=False))
            Q = _unit_f32(X[rows])
            kk = min(k, n - 1) if n > 1 else 1
            truth = _drop_self(exact_search(X, Q, kk + 1, chunk)[1], rows, kk)
            top = self.params["nlist"] if self.kind == "ivf" else 4096
            candidates = sorted({min(2 ** p, top) for p in range(0, 13)} | {top})
            if self.kind == "hnsw":
                candidates = [c for c in candidates if c >= kk + 1]
            for j, value in enumerate(candidates):
                found = _drop_self(self._raw_search(Q, kk + 1, value)[1], rows, kk)
                recall = recall_at_k(found, truth)
                if recall >= target or value == candidates[-1]:
                    break
            # One step wider than the smallest value that reached the target: catalog rows sit in the
            # cells k-means drew around them, so they overstate the recall of new queries (measured:
            # nprobe 1 gave 0.961 on catalog rows, 0.926 on fresh queries of the same 100k mixture).
            value = candidates[min(j + 1, len(candidates) - 1)]
            found = _drop_self(self._raw_search(Q, kk + 1, value)[1], rows, kk)
            self.params.update(tuned_recall=round(recall_at_k(found, truth), 4), tune_k=kk,
                               tune_queries=len(rows), target_recall=target)
            fixed = value
        if self.kind == "ivf":
            self.index.nprobe = int(fixed)
        else:
            self.index.hnsw.efSearch = int(fixed)
        self.params[name] = int(fixed)

    def _raw_search(self, Q: np.ndarray, k: int, value: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        sp = None
        if value is not None and self.kind == "ivf":
            sp = faiss.SearchParametersIVF(nprobe=int(value))
        elif value is not None and self.kind == "hnsw":
            sp = faiss.SearchParametersHNSW(efSearch=int(value))
        D, I = self.index.search(Q, k, params=sp)
        D = np.where(I < 0, -np.inf, D).astype(np.float32)
        return D, I.astype(np.int64)

    def _queries(self, Q: np.ndarray) -> np.ndarray:
        Q = np.asarray(Q)
        if Q.ndim == 1:
            Q = Q[None]
        if Q.ndim != 2 or Q.shape[1] != self.dim:
            raise ScaleError(f"queries of shape {Q.shape} for an index of {self.dim}-d rows. Fix: embed queries with "
                             f"the model and embedding kind that built the catalog ({self.dim} dims).")
        return _unit_f32(Q, "queries")

    def _k(self, k: int) -> int:
        if int(k) <= 0:
            raise ScaleError(f"k must be at least 1, got {k}. Fix: ask for k >= 1 neighbours.")
        return min(int(k), len(self))

    def search(self, Q: np.ndarray, k: int = 10, *, nprobe: int | None = None,
               ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k catalog rows by cosine for each query, Q (M, D) or (D,): (M, k) float32 scores and int64
        rows, best first; k above the catalog size gives the whole catalog. Where an approximate index found
        fewer than k rows the row is -1 and the score -inf. nprobe / ef_search override the tuned value."""
        Q, k = self._queries(Q), self._k(k)
        return self._raw_search(Q, k, nprobe if self.kind == "ivf" else ef_search if self.kind == "hnsw" else None)

    def neighbours(self, rows: Sequence[int] | np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar catalog products to catalog rows `rows`, each row itself left out."""
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        bad = rows[(rows < 0) | (rows >= len(self))]
        if len(bad):
            raise ScaleError(f"catalog row {int(bad[0])} out of range (catalog of {len(self)}). "
                             f"Fix: use rows 0..{len(self) - 1}.")
        k = self._k(k)
        Q = np.stack([self.index.reconstruct(int(r)) for r in rows]).astype(np.float32)
        D, I = self._raw_search(Q, min(k + 1, len(self)))
        keep = I != rows[:, None]
        # drop the row itself (or the last extra hit, when search ranked another row with the same score first)
        out_d = np.stack([d[m][:k] if m.sum() >= k else d[:k] for d, m in zip(D, keep)])
        out_i = np.stack([i[m][:k] if m.sum() >= k else i[:k] for i, m in zip(I, keep)])
        return out_d, out_i

    def save(self, path: str | Path) -> Path:
        """Write index.faiss, ids.npy and ann.json into folder `path`, atomically."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            np.save(tmp / "ids.npy", self.ids, allow_pickle=False)
            meta = {"version": FORMAT_VERSION, "kind": self.kind, "rows": len(self), "dim": self.dim,
                    "params": self.params, "faiss": faiss.__version__}
            (tmp / "ann.json").write_text(json.dumps(meta, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "AnnIndex":
        path = Path(path)
        meta_path = path / "ann.json"
        fix = "Fix: rebuild it with AnnIndex.build(...).save(folder)."
        if not meta_path.is_file():
            raise ScaleError(f"{path} holds no ANN index (no ann.json). {fix}")
        try:
            meta = json.loads(meta_path.read_text())
            version, kind, rows, dim = int(meta["version"]), str(meta["kind"]), int(meta["rows"]), int(meta["dim"])
        except (ValueError, KeyError, TypeError) as e:
            raise ScaleError(f"{meta_path} is unreadable ({e}). {fix}") from e
        if version != FORMAT_VERSION or kind not in KINDS[1:]:
            raise ScaleError(f"{meta_path}: index format {version} / kind {kind!r}, this code reads format "
                             f"{FORMAT_VERSION}. {fix}")
        try:
            index = faiss.read_index(str(path / "index.faiss"))
            ids = np.load(path / "ids.npy", allow_pickle=False)
        except (RuntimeError, OSError, ValueError) as e:
            first = str(e).splitlines()[0] if str(e) else repr(e)  # FAISS errors carry a C++ stack below
            raise ScaleError(f"{path}: index files unreadable ({first}). {fix}") from e
        if index.ntotal != rows or index.d != dim or len(ids) != rows:
            raise ScaleError(f"{path}: the index holds {index.ntotal} rows of {index.d} dims and {len(ids)} ids, "
                             f"ann.json says {rows} x {dim}. {fix}")
        params = dict(meta.get("params", {}))
        if kind == "ivf":
            index.nprobe = int(params.get("nprobe", 1))
            if index.direct_map.no():
                index.make_direct_map()
        elif kind == "hnsw":
            index.hnsw.efSearch = int(params.get("ef_search", 16))
        return cls(index, ids, kind, params)


def catalog_index(catalog, embedding: str = "fused", kind: str = "auto", **build_kw) -> AnnIndex:
    """The index a page searches: a `core.model.catalog.Catalog`'s (or an `EmbeddingStore`'s) rows, by product id.
    `embedding` picks Catalog.embedding(kind) ("fused", a modality, "sum:text+image", ...)."""
    X = catalog.X if hasattr(catalog, "X") else catalog.embedding(embedding)
    return AnnIndex.build(X, catalog.ids, kind=kind, **build_kw)


def _drop_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """(M, k+1) result rows -> (M, k) without each query's own row (or without the last, if it is absent)."""
    out = np.empty((len(found), k), dtype=np.int64)
    for j, (f, r) in enumerate(zip(found, rows)):
        rest = f[f != r]
        out[j] = rest[:k] if len(rest) >= k else np.r_[rest, np.full(k - len(rest), -1)]
    return out


def gallery_index(X: np.ndarray, ids: Sequence, exact_below: int = EXACT_BELOW, saved: str | Path | None = None,
                  kind: str = "ivf", **build_kw) -> AnnIndex | None:
    """The index a gallery of N rows is searched through: None (exact search) below `exact_below` rows, else
    the index saved in folder `saved` when it holds these N rows, else one built now (`kind`, tuned)."""
    n = len(X)
    if n < int(exact_below):
        return None
    if saved is not None and (Path(saved) / "ann.json").is_file():
        index = AnnIndex.load(saved)
        if len(index) == n and index.dim == X.shape[1]:
            return index
    return AnnIndex.build(X, ids, kind=kind, **build_kw)


def describe(index: AnnIndex | None, n: int) -> str:
    """Which search answered, for the page: "exact search over N products" or the index and its settings."""
    if index is None or index.kind == "flat":
        return f"exact search over {n:,} products"
    p = index.params
    knobs = (f"nlist {p.get('nlist')}, nprobe {p.get('nprobe')}" if index.kind == "ivf"
             else f"M {p.get('m')}, efSearch {p.get('ef_search')}")
    tuned = f", tuned recall@{p['tune_k']} {p['tuned_recall']:.3f}" if "tuned_recall" in p else ""
    return f"FAISS {index.kind.upper()} index over {n:,} products ({knobs}{tuned})"


def search_gallery(G: np.ndarray, q: np.ndarray, k: int, exclude: np.ndarray | None = None,
                   index: AnnIndex | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery rows by cosine for one query q (D,): through `index` when given (built on G's rows),
    else exact. `exclude` (N,) bool leaves rows out (the query product itself). Returns (rows, scores), best
    first; rows an approximate index did not reach are absent, so there may be fewer than k."""
    if index is None:
        from .projection import nearest

        return nearest(q, G, k=k, exclude=exclude)
    drop = np.flatnonzero(exclude) if exclude is not None else np.zeros(0, dtype=np.int64)
    D, I = index.search(np.asarray(q, dtype=np.float32), k=int(k) + len(drop))
    keep = (I[0] >= 0) & ~np.isin(I[0], drop)
    return I[0][keep][: int(k)], D[0][keep][: int(k)]
