"""Catalog check (core/explore/catalog_check.py, pages/8_Catalog_check.py) and S against the catalog on Modality scores."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app_fixtures import app_environment
from core.model.catalog import Catalog
from core.explore.catalog_check import (CSV_COLUMNS, PAIR_NAMES, catalog_scores, matrix_percentiles, pair_scores,
                                rank_catalog, ranking_csv, s_centred, swap_benchmark, takeaway)
from core.errors import ScaleError
from core.modalities import INDEX, MODALITIES

ROOT = Path(__file__).resolve().parents[1]
H = 16


def hand_made(n: int = 40, odd: int = 7, seed: int = 0, center: bool = True) -> Catalog:
    """n products whose five modalities share one direction each (they agree), except product `odd`, whose image
    points elsewhere. Every 5th product lacks video, every 4th lacks audio; two categories alternate."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, H))
    pooled = {m: (u + 0.3 * rng.standard_normal((n, H))).astype(np.float32) for m in MODALITIES}
    pooled["image"][odd] = -u[odd] + 0.3 * rng.standard_normal(H)
    present = np.ones((n, len(MODALITIES)), bool)
    present[::5, INDEX["video"]] = False
    present[::4, INDEX["audio"]] = False
    for i, m in enumerate(MODALITIES):
        pooled[m][~present[:, i]] = 0.0
    c = np.stack([pooled[m][present[:, i]].mean(0) / 5 for i, m in enumerate(MODALITIES)]) if center else None
    return Catalog(ids=np.array([f"p{i}" for i in range(n)]), categories=np.array(["shoes", "bags"] * (n // 2)),
                   sources=np.full(n, "", str), splits=np.full(n, "val"), present=present,
                   fused=np.zeros((n, H), np.float32), pooled=pooled,
                   cls={m: np.zeros((n, H), np.float32) for m in MODALITIES},
                   titles=np.array([f"product {i}" for i in range(n)]), center=c)


def test_pair_scores_are_centred_cosines_and_nan_where_absent():
    cat = hand_made()
    S = pair_scores(cat)
    k = PAIR_NAMES.index("text-image")
    z = {m: cat.pooled[m][3] / np.linalg.norm(cat.pooled[m][3]) - cat.center[INDEX[m]] for m in ("text", "image")}
    want = z["text"] @ z["image"] / np.linalg.norm(z["text"]) / np.linalg.norm(z["image"])
    assert S[3, k] == pytest.approx(want, abs=1e-5)
    assert np.isnan(S[0, PAIR_NAMES.index("text-video")]) and np.isnan(S[0, PAIR_NAMES.index("video-audio")])
    assert np.isfinite(S[1]).all()
    plain = pair_scores(cat, centred=False)  # a model whose S is not centred: plain cosines
    t, i = (cat.pooled[m][3] / np.linalg.norm(cat.pooled[m][3]) for m in ("text", "image"))
    assert plain[3, k] == pytest.approx(t @ i, abs=1e-5) and plain[3, k] != pytest.approx(S[3, k], abs=1e-3)


def test_s_centred_follows_the_models_rule():
    from core.model.config import ModelConfig

    assert s_centred(ModelConfig()) and s_centred({})  # the defaults centre S
    assert not s_centred(ModelConfig(center_harmony=False)) and not s_centred({"center_fusion": False})
    assert not s_centred({"fusion": "cls"})


def test_the_product_whose_image_disagrees_ranks_first_with_its_pair():
    cat = hand_made(odd=7)
    cs = catalog_scores(cat)
    df = rank_catalog(cat, cs)
    assert df.loc[0, "id"] == "p7" and "image" in df.loc[0, "weakest_pair"] and df.loc[0, "rank"] == 1
    assert df.loc[0, "percentile"] < 100 / len(cat) and df.loc[0, "z"] < -3  # the lowest S of its pair, far off
    assert list(df.columns) == CSV_COLUMNS and len(df) == len(cat) and df["z"].is_monotonic_increasing
    assert rank_catalog(cat, cs, scope="text").loc[0, ["id", "weakest_pair"]].tolist() == ["p7", "text-image"]
    # percentiles: the share of products with the pair below (ties half), in 0..100
    p = cs.percentile[:, PAIR_NAMES.index("text-image")]
    assert sorted(p) == pytest.approx([100 * (r + 0.5) / len(cat) for r in range(len(cat))])


def test_other_odd_products_and_all_pairs_scope():
    cat = hand_made(odd=12, seed=3)
    assert rank_catalog(cat, scope="text").loc[0, "id"] == "p12" and rank_catalog(cat).loc[0, "id"] == "p12"
    with pytest.raises(ScaleError, match="scope"):
        rank_catalog(cat, scope="most")


def test_filters_by_category_and_by_pair():
    cat = hand_made(odd=7)
    cs = catalog_scores(cat)
    bags = rank_catalog(cat, cs, categories=["bags"])
    assert set(bags["category"]) == {"bags"} and len(bags) == 20 and bags.loc[0, "id"] == "p7"  # 7 is odd: bags
    assert rank_catalog(cat, cs, categories=["shoes"])["id"].tolist().count("p7") == 0
    video = rank_catalog(cat, cs, pair="video-audio")
    has = cat.present[:, INDEX["video"]] & cat.present[:, INDEX["audio"]]
    assert set(video["id"]) == set(cat.ids[has]) and set(video["weakest_pair"]) == {"video-audio"}
    assert video["percentile"].is_monotonic_increasing and video["z"].is_monotonic_increasing
    assert (video["pairs"] == 1).all()
    with pytest.raises(ScaleError, match="text-image"):
        rank_catalog(cat, cs, pair="text-smell")


def test_csv_has_the_expected_columns_and_every_ranked_row():
    cat = hand_made()
    df = rank_catalog(cat, categories=["shoes"])
    back = pd.read_csv(io.BytesIO(ranking_csv(df)))
    assert list(back.columns) == CSV_COLUMNS and len(back) == 20
    assert back["id"].tolist() == df["id"].tolist()
    assert back["S"].to_numpy() == pytest.approx(df["S"].to_numpy(), abs=1e-5)


def test_percentile_matrix_and_takeaway_of_a_new_product():
    cat = hand_made()
    cs = catalog_scores(cat)
    S = np.full((5, 5), 0.5)
    np.fill_diagonal(S, 1.0)
    S[INDEX["text"], INDEX["image"]] = S[INDEX["image"], INDEX["text"]] = -1.0  # below every catalog product
    S[INDEX["audio"], :] = S[:, INDEX["audio"]] = np.nan  # no audio
    P = matrix_percentiles(S, cs)
    assert P[INDEX["text"], INDEX["image"]] == 0.0 and P[INDEX["image"], INDEX["text"]] == 0.0
    assert np.isnan(P[INDEX["audio"]]).all() and np.isnan(np.diag(P)).all()
    line = takeaway(S, cs)
    # every pair is below the whole catalog (percentile 0): the one furthest below its pair's median is named
    assert line.startswith("Its image agrees with its title less than any of the 40 catalog products"), line
    S[INDEX["text"], INDEX["image"]] = S[INDEX["image"], INDEX["text"]] = np.sort(cs.S[:, 1])[9:11].mean()  # 10 of 40 below
    S[INDEX["table"], INDEX["image"]] = S[INDEX["image"], INDEX["table"]] = np.nanmax(cs.S[:, 4]) + 1
    S[INDEX["text"], INDEX["table"]] = S[INDEX["table"], INDEX["text"]] = np.nanmax(cs.S[:, 0]) + 1
    S[INDEX["text"], INDEX["video"]] = S[INDEX["video"], INDEX["text"]] = np.nanmax(cs.S[:, 2]) + 1
    S[INDEX["table"], INDEX["video"]] = S[INDEX["video"], INDEX["table"]] = np.nanmax(cs.S[:, 5]) + 1
    S[INDEX["image"], INDEX["video"]] = S[INDEX["video"], INDEX["image"]] = np.nanmax(cs.S[:, 7]) + 1
    assert PAIR_NAMES[1] == "text-image" and matrix_percentiles(S, cs)[0, 2] == pytest.approx(25.0)
    assert takeaway(S, cs).startswith("Its image agrees with its title less than 75% of the 40 catalog products")
    assert takeaway(np.full((5, 5), np.nan), cs) is None


# ---------------------------------------------------------------- with the tiny real model and the app
@pytest.fixture(scope="module")
def app_env(setup):
    with app_environment(setup):
        yield setup


def test_numpy_scores_match_the_models_S(setup, model):
    from core.model.inference import forward_items

    cat = Catalog.load(setup.catalog)
    S = pair_scores(cat, s_centred(model.cfg))
    out = forward_items(model, [setup.features[i] for i in cat.ids]).S.float().numpy()
    for k, name in enumerate(PAIR_NAMES):
        a, b = (INDEX[m] for m in name.split("-"))
        np.testing.assert_allclose(S[:, k], out[:, a, b], atol=5e-3, equal_nan=True)  # fp16 storage


def test_swap_benchmark_on_the_tiny_catalog(setup, model):
    items = [setup.features[p.id] for p in setup.products]
    cats = [p.category for p in setup.products]
    res = swap_benchmark(model, items, cats, fraction=0.25, seeds=(0, 1), modalities=("image", "audio"))
    assert res["products"] == len(items) and res["cut"] == round(0.25 * len(items))
    for m in ("image", "audio"):
        r = res["modalities"][m]
        for scope in ("text", "all"):
            assert 0.0 <= r[scope]["precision"] <= 1.0 and 0.0 <= r[scope]["recall"] <= 1.0
            assert all(0 < n <= res["cut"] for n in r[scope]["swapped_per_seed"])
            assert all(0 <= h <= n for h, n in zip(r[scope]["hits_per_seed"], r[scope]["swapped_per_seed"]))
            assert 1 <= r[scope]["mean_rank"] <= len(items)
        assert 0 < r["chance_precision"] <= 0.5
    with pytest.raises(ScaleError, match="fraction"):
        swap_benchmark(model, items, cats, fraction=1.5)


def _app(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_catalog_check_page_lists_ranks_and_filters(app_env):
    at = _app("8_Catalog_check")
    assert not at.error and "What am I looking at" in at.caption[0].value
    shown = at.dataframe[0].value
    cat = Catalog.load(app_env.catalog)
    want = rank_catalog(cat)
    assert shown["id"].tolist() == want["id"].tolist()[: len(shown)] and len(shown) == min(25, len(want))
    assert shown["title"].str.len().gt(0).all()  # titles from the manifest
    assert shown["thumbnail"].str.startswith("data:image/png;base64,").all()
    assert any(b.proto.label == "Ranking (CSV)" for b in at.get("download_button"))
    one = sorted(set(cat.categories.tolist()))[0]
    at.multiselect(key="cc_categories").set_value([one])
    at.run()
    assert set(at.dataframe[0].value["category"]) == {one}
    at.selectbox(key="cc_rank_by").set_value("only text-image")
    at.run()
    assert not at.exception
    assert set(at.dataframe[0].value["weakest_pair"]) == {"text-image"}


def test_modality_scores_puts_S_against_the_catalog_and_compares(app_env, explorer_tiny):
    at = _app("1_Upload_and_inspect")
    for i in (0, 1):
        at.selectbox(key="example_pick").select_index(i)
        at.run()
        at.button(key="example_load").click()
        at.run()
    at.switch_page("pages/2_Modality_scores.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    specs = {json.loads(c.proto.spec)["layout"]["title"]["text"]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    entry = at.session_state["products"][at.session_state["current"]]
    a = explorer_tiny.analyze(entry["features"])
    cs = catalog_scores(Catalog.load(app_env.catalog))
    pct = np.array(specs["Percentile of S among catalog products"]["data"][0]["z"], dtype=float)
    np.testing.assert_allclose(pct, matrix_percentiles(a.S, cs), atol=1e-6)
    # colours fitted to this product's values, not a fixed -1..1
    s_trace = specs["S (cosine), missing=mask"]["data"][0]
    off = a.S[np.isfinite(a.S) & ~np.eye(5, dtype=bool)]
    assert s_trace["zmin"] > -1 and s_trace["zmin"] <= off.min() and s_trace["zmax"] >= off.max()
    assert any("Against the catalog" in m.value and "percentile" in m.value for m in at.markdown)
    complete = all(entry["decoded"].present().values())
    assert any(("toggle only matters when a modality is missing" if complete else "leaves it out of S") in c.value
               for c in at.caption)
    names = list(at.session_state["products"])
    diff = [t for t in specs if t.startswith("S · ") and " − " in t]
    assert diff == [f"S · {names[1]} − S · {names[0]}"]
    b = explorer_tiny.analyze(at.session_state["products"][names[0]]["features"])
    np.testing.assert_allclose(np.array(specs[diff[0]]["data"][0]["z"], dtype=float), a.S - b.S, atol=1e-5)
    assert specs["S (cosine), missing=mask"]["layout"]["margin"]["l"] >= 60  # exported PNGs keep the labels


@pytest.fixture(scope="module")
def explorer_tiny(setup):
    from core.explore.explorer import Explorer

    return Explorer.load(setup.checkpoint, "cpu")
