"""core.explore.ann (FAISS indexes by cosine) and core.explore.catalog_store (memory-mapped embedding store)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import core.explore.ann as ann
from core.explore.ann import AnnIndex, exact_search, recall_at_k
from core.explore.catalog_store import EmbeddingStore, StoreWriter, write_store
from core.errors import ScaleError


def _mixture(n: int, d: int = 32, clusters: int = 30, seed: int = 0, spread: float = 0.6):
    """Clustered rows, like product embeddings: unit centres plus noise (centres fixed by seed 0)."""
    centres = np.random.default_rng(0).standard_normal((clusters, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, clusters, n)
    return (centres[y] + spread * rng.standard_normal((n, d))).astype(np.float32)


def _brute(X, Q, k):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    S = Qn.astype(np.float64) @ Xn.T.astype(np.float64)
    idx = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(S, idx, 1), idx


@pytest.fixture(scope="module")
def data():
    return _mixture(3000), _mixture(60, seed=1)


def test_exact_index_and_chunked_exact_search_equal_brute_force(data):
    X, Q = data
    want_s, want_i = _brute(X, Q, 10)
    index = AnnIndex.build(X, kind="auto")
    assert index.kind == "flat" and len(index) == 3000 and index.dim == 32
    s, i = index.search(Q, 10)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(s, want_s, atol=1e-5)
    s2, i2 = exact_search(X, Q, 10, chunk=701)  # chunks that do not divide N: the merge is exercised
    np.testing.assert_array_equal(i2, want_i)
    np.testing.assert_allclose(s2, want_s, atol=1e-5)
    # one query as a vector; k above the catalog size returns the whole catalog, ranked
    s1, i1 = AnnIndex.build(X[:5]).search(Q[0], 50)
    assert i1.shape == (1, 5) and sorted(i1[0].tolist()) == [0, 1, 2, 3, 4] and (np.diff(s1[0]) <= 0).all()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_reach_recall_and_tune_their_search(data, kind):
    X, Q = data
    index = AnnIndex.build(X, kind=kind, target_recall=0.95)
    assert index.kind == kind
    knob = "nprobe" if kind == "ivf" else "ef_search"
    assert index.params[knob] >= 1 and index.params["tuned_recall"] >= 0.95
    _, truth = _brute(X, Q, 10)
    _, found = index.search(Q, 10)
    assert recall_at_k(found, truth) >= 0.9
    if kind == "ivf":  # the tuned nprobe was needed: one cell finds less, and the override leaves the index as it was
        assert index.params["nlist"] == ann.default_nlist(3000) == 64
        low = recall_at_k(index.search(Q, 10, nprobe=1)[1], truth)
        assert low < recall_at_k(found, truth)
        assert index.index.nprobe == index.params["nprobe"]


def test_auto_picks_ivf_above_the_exact_limit(data, monkeypatch):
    monkeypatch.setattr(ann, "EXACT_BELOW", 1000)
    index = AnnIndex.build(data[0][:1500], kind="auto", nprobe=4)
    assert index.kind == "ivf" and index.params["nprobe"] == 4 and "tuned_recall" not in index.params


def test_neighbours_leave_the_product_itself_out(data):
    X, _ = data
    index = AnnIndex.build(X, ids=[f"p{i}" for i in range(len(X))])
    s, i = index.neighbours([7, 42], k=5)
    _, want = _brute(X, X[[7, 42]], 6)
    np.testing.assert_array_equal(i, want[:, 1:])
    assert index.ids[i[0, 0]] == f"p{want[0, 1]}"
    with pytest.raises(ScaleError, match="out of range"):
        index.neighbours([3000])


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(tmp_path, data, kind):
    X, Q = data
    index = AnnIndex.build(X, ids=[f"id{i}" for i in range(len(X))], kind=kind)
    before = index.search(Q, 10)
    index.save(tmp_path / "ann")
    index.save(tmp_path / "ann")  # saving again replaces the folder
    loaded = AnnIndex.load(tmp_path / "ann")
    assert loaded.kind == kind and loaded.params == index.params and loaded.ids.tolist() == index.ids.tolist()
    after = loaded.search(Q, 10)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0])
    assert loaded.neighbours([3], 4)[1].shape == (1, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann"]  # no temporary folders left behind


def test_concurrent_searches_match_serial(data):
    X, Q = data
    index = AnnIndex.build(X, kind="ivf")
    want = index.search(Q, 10)[1]
    results, errors = [None] * 4, []

    def work(j):
        try:
            # each thread overrides nprobe per call; the shared index must not change under the others
            results[j] = [index.search(Q, 10, nprobe=[1, index.params["nprobe"]][r % 2])[1] for r in range(6)]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        for rep in r[1::2]:
            np.testing.assert_array_equal(rep, want)
    assert index.index.nprobe == index.params["nprobe"]


def test_index_errors_name_the_fix(data):
    X, Q = data
    index = AnnIndex.build(X[:100])
    with pytest.raises(ScaleError, match="32 dims"):
        index.search(np.ones((2, 16), np.float32), 5)
    with pytest.raises(ScaleError, match="k >= 1"):
        index.search(Q, 0)
    with pytest.raises(ScaleError, match="empty"):
        AnnIndex.build(np.zeros((0, 32), np.float32))
    with pytest.raises(ScaleError, match="kind"):
        AnnIndex.build(X, kind="lsh")
    with pytest.raises(ScaleError, match="one id per row"):
        AnnIndex.build(X[:10], ids=["a"])
    bad = X[:50].copy()
    bad[17, 3] = np.nan
    with pytest.raises(ScaleError, match="row 17"):
        AnnIndex.build(bad, chunk=16)
    with pytest.raises(ScaleError, match="row 17"):  # found while training the cells, named by its catalog row
        AnnIndex.build(bad, kind="ivf", nlist=1)
    with pytest.raises(ScaleError, match="queries: row 17"):  # normalizing would have made it a zero row
        index.search(bad, 3)
    with pytest.raises(ScaleError, match="nlist"):
        AnnIndex.build(X[:50], kind="ivf", nlist=80)


def test_load_errors_name_the_folder(tmp_path, data):
    with pytest.raises(ScaleError, match="no ann.json"):
        AnnIndex.load(tmp_path)
    AnnIndex.build(data[0][:100]).save(tmp_path / "a")
    (tmp_path / "a" / "index.faiss").write_bytes(b"not an index")
    with pytest.raises(ScaleError, match="unreadable"):
        AnnIndex.load(tmp_path / "a")


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_store_round_trip_with_chunked_appends(tmp_path, data, dtype):
    X = data[0][:1000]
    ids = [f"sku-{i}" for i in range(1000)]
    cats = [f"c{i % 7}" if i % 5 else "" for i in range(1000)]
    with StoreWriter(tmp_path / "s", dim=32, dtype=dtype) as w:
        for a, b in [(0, 1), (1, 300), (300, 301), (301, 1000)]:  # uneven chunks, single rows included
            w.append(X[a:b], ids[a:b], cats[a:b])
    store = EmbeddingStore.open(tmp_path / "s")
    assert isinstance(store.X, np.memmap) and store.X.dtype == np.dtype(dtype) and not store.X.flags.writeable
    assert len(store) == 1000 and store.dim == 32
    np.testing.assert_array_equal(store.X, X.astype(dtype))
    assert store.ids.tolist() == ids and store.categories.tolist() == cats
    assert np.load(tmp_path / "s" / "embeddings.npy").shape == (1000, 32)  # a plain .npy to numpy
    # an index reads the memmap in chunks and finds what the in-memory rows find
    want = AnnIndex.build(X.astype(dtype).astype(np.float32)).search(data[1], 5)[1]
    np.testing.assert_array_equal(AnnIndex.build(store.X, store.ids, chunk=128).search(data[1], 5)[1], want)
    again = write_store(tmp_path / "t", store.X, store.ids, dtype=dtype, chunk=333)
    np.testing.assert_array_equal(again.X, store.X)
    assert again.categories.tolist() == [""] * 1000


def test_store_writer_is_atomic_and_checks_its_input(tmp_path, data):
    X = data[0][:20]
    write_store(tmp_path / "s", X, [str(i) for i in range(20)])
    with pytest.raises(ScaleError, match="already written"):
        with StoreWriter(tmp_path / "s", dim=32) as w:
            w.append(X[:10], [str(i) for i in range(10)])
            w.append(X[10:], ["0"] + [str(i) for i in range(11, 20)])  # id "0" again
    old = EmbeddingStore.open(tmp_path / "s")  # the failed rewrite left the old store whole
    assert len(old) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    with StoreWriter(tmp_path / "u", dim=32) as w:
        with pytest.raises(ScaleError, match=r"\(n, 32\)"):
            w.append(X[:, :16], ["a"] * 20)
        with pytest.raises(ScaleError, match="20 embedding rows"):
            w.append(X, ["a"])
        bad = X.copy()
        bad[4, 0] = np.inf
        with pytest.raises(ScaleError, match="row 4"):
            w.append(bad, [str(i) for i in range(20)])
        with pytest.raises(ScaleError, match="line break"):
            w.append(X[:1], ["a\nb"])
        w.append(X[:2], ["a", "b"])
    assert len(EmbeddingStore.open(tmp_path / "u")) == 2
    with pytest.raises(ScaleError, match="no rows"):
        StoreWriter(tmp_path / "empty", dim=32).close()
    assert not (tmp_path / "empty").exists()


def test_store_open_errors_name_the_file(tmp_path, data):
    with pytest.raises(ScaleError, match="not an embedding store"):
        EmbeddingStore.open(tmp_path)
    write_store(tmp_path / "s", data[0][:50], [str(i) for i in range(50)])
    emb = tmp_path / "s" / "embeddings.npy"
    emb.write_bytes(emb.read_bytes()[:-32 * 4 * 3])  # a truncated copy: three rows short
    with pytest.raises(ScaleError, match="embeddings.npy"):
        EmbeddingStore.open(tmp_path / "s")
    write_store(tmp_path / "t", data[0][:50], [str(i) for i in range(50)])
    (tmp_path / "t" / "ids.txt").write_text("a\nb\n")
    with pytest.raises(ScaleError, match=r"ids.txt: 2 lines for 50 rows"):
        EmbeddingStore.open(tmp_path / "t")


def test_bench_catalog_is_the_same_whatever_the_chunking():
    from core.bench import synthetic_catalog

    whole = synthetic_catalog(200, 4, 5, seed=3, start=65_436)  # crosses a 65,536-row block boundary
    parts = np.concatenate([synthetic_catalog(70, 4, 5, seed=3, start=65_436),
                            synthetic_catalog(130, 4, 5, seed=3, start=65_506)])
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(whole, synthetic_catalog(200, 4, 5, seed=4, start=65_436))


def test_a_catalog_goes_to_a_store_and_an_index_by_product_id(tmp_path, data):
    from core.explore.ann import catalog_index
    from core.model.catalog import Catalog
    from core.explore.catalog_store import store_from_catalog
    from core.modalities import MODALITIES

    X = data[0][:40]
    n, blank = len(X), np.full(40, "", dtype=str)
    cat = Catalog(ids=np.array([f"sku{i}" for i in range(n)]), categories=np.array([f"c{i % 3}" for i in range(n)]),
                  sources=blank, splits=blank, present=np.ones((n, 5), bool), fused=X,
                  pooled={m: X for m in MODALITIES}, cls={m: X for m in MODALITIES})
    store = store_from_catalog(cat, tmp_path / "s")  # float16 by default
    assert store.X.dtype == np.float16 and store.ids.tolist() == cat.ids.tolist()
    assert store.categories.tolist() == cat.categories.tolist()
    by_catalog, by_store = catalog_index(cat, "fused"), catalog_index(store)
    _, want = _brute(X, X[:3], 4)
    np.testing.assert_array_equal(by_catalog.search(X[:3], 4)[1], want)
    assert by_store.ids[by_store.search(X[5], 1)[1][0, 0]] == "sku5"
