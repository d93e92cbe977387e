""""Use my catalog" in core (core.explore.my_catalog) and the exact / ANN choice of the retrieval path."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.data.features import load_index
from core.data.records import read_manifest
from core.errors import ScaleError
from core.explore import my_catalog as mc
from core.explore.ann import AnnIndex, describe, exact_search, gallery_index, search_gallery
from core.model.catalog import Catalog


class Stop(Exception):
    pass


def test_interrupted_build_resumes_with_the_finished_features(synth_catalog, setup, model, tmp_path):
    ids = [p.id for p in read_manifest(synth_catalog)]
    seen: list[tuple[int, int, str]] = []

    def stop_after_two(done: int, total: int, phase: str) -> None:
        seen.append((done, total, phase))
        if phase == "features" and done >= 2:
            raise Stop

    with pytest.raises(Stop):
        mc.build_my_catalog(synth_catalog, setup.checkpoint, model, root=tmp_path, progress=stop_after_two, chunk=2)
    folder = mc.catalog_folder(synth_catalog, setup.checkpoint, tmp_path)
    assert folder.parent == tmp_path and synth_catalog.stem in folder.name
    assert len(load_index(folder / "features")["products"]) == 2  # the finished chunk is on disk
    assert mc.current(synth_catalog, setup.checkpoint, tmp_path) is None  # but no catalog yet

    seen.clear()
    res = mc.build_my_catalog(synth_catalog, setup.checkpoint, model, root=tmp_path,
                              progress=lambda *a: seen.append(a), chunk=2)
    assert (res.features_reused, res.features_built) == (2, len(ids) - 2)
    feats = [a for a in seen if a[2] == "features"]
    assert feats[0] == (2, len(ids), "features") and feats[-1] == (len(ids), len(ids), "features")
    assert seen[-1] == (len(ids), len(ids), "embed")
    cat = Catalog.load(res.catalog_path)
    assert cat.ids.tolist() == ids and res.products == len(ids) and not res.skipped
    assert np.isfinite(cat.fused).all() and cat.titles[0] == read_manifest(synth_catalog)[0].title
    assert res.index == "exact" and res.ann is None
    assert mc.current(synth_catalog, setup.checkpoint, tmp_path) == res

    # the same manifest and model again: nothing is featurized or embedded
    seen.clear()
    again = mc.build_my_catalog(synth_catalog, setup.checkpoint, model, root=tmp_path, progress=lambda *a: seen.append(a))
    assert again == res and seen == [(len(ids), len(ids), "done")]


def test_bad_lines_are_skipped_and_listed_and_large_catalogs_get_an_index(synth_catalog, setup, model, tmp_path):
    lines = synth_catalog.read_text().splitlines()
    bad = synth_catalog.with_name("with_bad_lines_manifest.jsonl")
    bad.write_text("\n".join([lines[0], "{not json", *lines[1:3]]) + "\n")
    res = mc.build_my_catalog(bad, setup.checkpoint, model, root=tmp_path, exact_below=2)
    assert res.products == 3
    assert len(res.skipped) == 1 and res.skipped[0]["where"].endswith(":2")
    assert str(synth_catalog.parent) not in json.dumps(res.to_json())  # no server path in what the app shows
    index = AnnIndex.load(res.ann)
    assert res.index == "ivf" and len(index) == 3
    assert index.ids.tolist() == Catalog.load(res.catalog_path).ids.tolist()


def test_a_manifest_without_usable_products_names_the_file(setup, model, tmp_path):
    empty = tmp_path / "empty_manifest.jsonl"
    empty.write_text("{not json\n")
    with pytest.raises(ScaleError, match="empty_manifest.jsonl.*Fix"):
        mc.build_my_catalog(empty, setup.checkpoint, model, root=tmp_path / "work")


def test_folder_differs_per_manifest_and_checkpoint(tmp_path):
    a = mc.catalog_folder(tmp_path / "a" / "manifest.jsonl", tmp_path / "ck1", tmp_path)
    assert a != mc.catalog_folder(tmp_path / "b" / "manifest.jsonl", tmp_path / "ck1", tmp_path)
    assert a != mc.catalog_folder(tmp_path / "a" / "manifest.jsonl", tmp_path / "ck2", tmp_path)
    assert str(tmp_path / "a") not in a.name


def test_retrieval_uses_ann_above_the_threshold_and_exact_below():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 16))
    X = (centres[rng.integers(0, 10, 400)] + 0.3 * rng.standard_normal((400, 16))).astype(np.float32)
    ids = [f"p{i}" for i in range(len(X))]
    assert gallery_index(X, ids, exact_below=1000) is None
    index = gallery_index(X, ids, exact_below=100)
    assert index is not None and index.kind == "ivf" and "IVF" in describe(index, len(X))
    assert describe(None, len(X)).startswith("exact")
    exclude = np.zeros(len(X), bool)
    exclude[7] = True
    rows, scores = search_gallery(X, X[7], 10, exclude, index)
    assert 7 not in rows and len(rows) == 10 and np.all(np.diff(scores) <= 1e-6)
    truth = exact_search(X[np.arange(len(X)) != 7], X[7:8], 10)[1][0]
    truth = np.where(truth >= 7, truth + 1, truth)  # back to rows of X
    assert len(set(rows.tolist()) & set(truth.tolist())) >= 8
    ex_rows, _ = search_gallery(X, X[7], 10, exclude, None)
    assert set(ex_rows.tolist()) == set(truth.tolist())
