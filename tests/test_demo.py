"""AppTest checks of the demo-ready explorer (issue #11 parts 3-9), against the tiny checkpoint of app_fixtures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app_fixtures import app_environment, goto, new_app, no_exception, tiny_setup  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(featurizer):
    with app_environment(tiny_setup(featurizer)) as s:  # the app reads only under its roots (core.explore.roots)
        yield s


def plotly_values(v) -> list[float]:
    """A figure JSON's array: a list, or plotly's typed-array form {"dtype", "bdata" (base64)}."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)


def gallery_buttons(at: AppTest) -> list:
    return [b for b in at.button if str(b.key or "").startswith("gal_")]


def open_first_gallery_product(at: AppTest) -> str:
    b = gallery_buttons(at)[0]
    pid = b.key[len("gal_"):]
    b.click()
    at.run()
    no_exception(at)
    return pid


# ---------------------------------------------------------------- 3. one-click demo
def test_gallery_rule_picks_only_held_out_products_one_per_broad_category():
    from core.explore.gallery import choose_gallery
    from core.data.records import Product

    def P(i, cat, split, n_mod=5):
        return Product(id=i, title="t", category=cat, split=split, images=["x.jpg"],
                       attributes={"a": "b"} if n_mod >= 3 else {}, video="v.mp4" if n_mod >= 4 else None,
                       audio="a.ogg" if n_mod >= 5 else None)

    prods = [P("tr", "Shoes/Heels", "train"), P("a1", "Shoes/Heels", "val", 3), P("a2", "Shoes/Flats", "val"),
             P("b1", "Bags/Clutch", "val"), P("c1", "Toys/Ball", "val"), P("noimg", "Hats/Cap", "val")]
    prods[-1].images = []
    got = choose_gallery(prods, [p.id for p in prods], n=3)
    assert [p.id for p in got] == ["b1", "a2", "c1"]  # one per broad category, most complete first
    assert all(p.split != "train" and p.images for p in choose_gallery(prods, [p.id for p in prods], n=10))
    assert [p.id for p in choose_gallery(prods, ["a1"], n=3)] == ["a1"]  # only catalog products


def test_home_is_labelled_home_and_paths_are_folded_away(setup):
    at = new_app()
    no_exception(at)
    assert at.title[0].value == "SCALE Explorer"
    folded = [e for e in at.sidebar.children.values() if type(e).__name__ == "Expander"]
    assert folded and folded[0].label.startswith("Advanced")
    assert at.sidebar.selectbox(key="ckpt_dir") is not None  # inside the expander, still there


def test_gallery_click_loads_a_val_product_and_opens_its_scores(setup):
    at = new_app()
    buttons = gallery_buttons(at)
    val_ids = {p.id for p in setup.products if p.split == "val"}
    assert buttons and {b.key[4:] for b in buttons} <= val_ids
    pid = open_first_gallery_product(at)
    entry = at.session_state["products"][at.session_state["current"]]
    assert entry["product"].id == pid
    assert at.title[0].value.startswith("Modality scores")  # switched page


def test_upload_form_and_choices_survive_a_page_switch(setup):
    at = goto(new_app(), "1_Upload_and_inspect")
    at.text_input(key="up_title").input("Blue mug")
    at.text_area(key="up_description").input("A ceramic mug")
    at.run()
    goto(at, "7_Training")
    goto(at, "1_Upload_and_inspect")
    no_exception(at)
    assert at.text_input(key="up_title").value == "Blue mug"
    assert at.text_area(key="up_description").value == "A ceramic mug"


# ---------------------------------------------------------------- 4. masked prediction
def test_default_masks_are_content_words_and_word_values():
    from core.explore.explorer import content_positions, value_entities

    toks = [(1, "ken"), (2, "##ob"), (3, "i"), (4, "trail"), (5, "-"), (6, "the"), (7, "jacket"), (8, "s")]
    got = content_positions(toks, n=2)
    assert got == [4, 7]  # not the first pieces, no "##" piece, one-letter piece, stop word or punctuation
    ents = [(0, "eco collection", "no"), (1, "size", "m"), (2, "material", "fleece")]
    assert value_entities(ents) == [2]


def test_masked_page_defaults_baseline_and_drop_mode_statement(setup):
    at = new_app()
    open_first_gallery_product(at)
    goto(at, "3_Masked_prediction")
    no_exception(at)
    name = at.session_state["current"]
    chosen = at.multiselect(key=f"mp_text:{name}").value
    assert chosen, "a default text mask"
    labels = {int(o.split(":")[0]): o.split(": ", 1)[1] for o in at.multiselect(key=f"mp_text:{name}").options}
    assert all(len(labels[i]) >= 3 and not labels[i].startswith("##") for i in chosen)
    assert any(m.label.startswith("Baseline") for m in at.metric)
    at.radio(key="mp_mode").set_value("Predict one modality from the others")
    at.run()
    at.selectbox(key="mp_drop").set_value("image")
    at.run()
    no_exception(at)
    said = " ".join(i.value for i in at.info)
    assert "every" in said and "Nothing of the other" in said
    df = at.dataframe[0].value if at.dataframe else None
    assert df is None or "truth" not in df or not len(df)  # nothing of text/table masked in drop-image mode


# ---------------------------------------------------------------- 5. uploads against the catalog
def test_match_catalog_flags_a_duplicate_and_infers_the_category(setup):
    from core.model.catalog import Catalog
    from core.explore.explorer import match_catalog

    cat = Catalog.load(setup.catalog)
    m = match_catalog(cat.fused[0] + 1e-6, cat, "upload-123")
    assert m.duplicate_id == str(cat.ids[0]) and m.duplicate_cosine > 0.999
    ex = m.exclude(cat.ids, "upload-123")
    assert ex[0] and ex.sum() == 1
    far = match_catalog(-cat.fused[0], cat, "upload-9")
    assert far.duplicate_id is None and far.category in set(cat.categories.tolist())
    assert far.votes[0][0] == far.category and sum(n for _, n in far.votes) <= 10


def _upload_copy_of(at: AppTest, p) -> None:
    at.text_input(key="up_title").input(p.title)
    at.text_area(key="up_description").input(p.description or "")
    at.file_uploader(key="up_images").set_value([(Path(p.images[0]).name, Path(p.images[0]).read_bytes(), "image/png")])
    if p.video:
        at.file_uploader(key="up_video").set_value((Path(p.video).name, Path(p.video).read_bytes(), "video/mp4"))
    if p.audio:
        at.file_uploader(key="up_audio").set_value((Path(p.audio).name, Path(p.audio).read_bytes(), "audio/wav"))
    at.file_uploader(key="up_table_file").set_value(
        ("attrs.json", json.dumps(p.attributes).encode(), "application/json"))
    at.run()
    at.button(key="up_submit").click()
    at.run()
    no_exception(at)


def test_upload_gets_an_inferred_category_shown_and_editable(setup):
    p = setup.products[1]
    at = goto(new_app(), "1_Upload_and_inspect")
    at.text_input(key="up_title").input("something round")
    at.file_uploader(key="up_images").set_value([("x.png", Path(p.images[0]).read_bytes(), "image/png")])
    at.run()
    at.button(key="up_submit").click()
    at.run()
    no_exception(at)
    name = at.session_state["current"]
    entry = at.session_state["products"][name]
    assert entry["category_source"] == "inferred" and entry["product"].category
    box = at.selectbox(key=f"up_category:{name}")
    assert box.value == entry["product"].category and "inferred" in box.label
    other = next(o for o in box.options if o != box.value)
    box.set_value(other)
    at.run()
    assert at.session_state["products"][name]["product"].category == other


def test_duplicate_upload_is_flagged_and_left_out_of_its_retrieval(setup):
    p = setup.products[0]
    at = goto(new_app(), "1_Upload_and_inspect")
    _upload_copy_of(at, p)
    entry = at.session_state["products"][at.session_state["current"]]
    assert entry["product"].id != p.id
    warn = " ".join(w.value for w in at.warning)
    assert "already in the catalog" in warn and p.id in warn
    goto(at, "6_Retrieval")
    no_exception(at)
    spec = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if json.loads(c.proto.spec)["data"][0]["type"] == "bar")
    scores = plotly_values(spec["data"][0]["x"])
    assert scores and max(scores) < 0.999  # its catalog twin (cosine ~1) is not among the results


def test_retrieval_shows_the_query_and_warns_on_weak_matches(setup, monkeypatch):
    import core.explore.explorer as ce

    at = new_app()
    open_first_gallery_product(at)
    monkeypatch.setattr(ce, "LOW_COSINE", 1.01)  # every match counts as weak
    goto(at, "6_Retrieval")
    no_exception(at)
    assert any("Query:" in m.value for m in at.markdown)
    assert any("Weak matches" in w.value for w in at.warning)
    monkeypatch.setattr(ce, "LOW_COSINE", -1.0)  # none does
    at.run()
    assert not any("Weak matches" in w.value for w in at.warning)


# ---------------------------------------------------------------- 8. training page
def test_loss_curve_leaves_absent_batches_out():
    from core.explore.training_log import loss_curve

    y = loss_curve(np.array([2.0, 0.0, 4.0, 0.0]), 1)
    assert np.isnan(y[1]) and np.isnan(y[3]) and y[0] == 2.0 and y[2] == 4.0
    y2 = loss_curve(np.array([2.0, 0.0, 4.0]), 3)
    assert y2[2] == pytest.approx(3.0)  # the mean of the batches that had the modality, not (2+0+4)/3


def test_training_page_drops_zeros_shows_validation_and_folds_the_card(setup):
    ck = setup.checkpoint.parent / "ckpt-zeros"
    ck.mkdir(exist_ok=True)
    for f in ("config.json", "model.safetensors", "card.md"):
        (ck / f).write_bytes((setup.checkpoint / f).read_bytes())
    lines = [{"step": i, "epoch": 0, "lr": 1e-3, "loss": {"mlm": 3.0 - 0.1 * i, "mfp": 0.0 if i % 2 else 0.5, "total": 4.0}}
             for i in range(10)]
    lines.append({"step": 9, "epoch": 1, "val": {"mlm": 2.5, "mfp": 0.4, "total": 3.5, "mAP@10": 50.0}})
    lines.append({"step": 9, "epoch": 1, "fusion": {"fusion_weights": {"text": 1.0, "table": 0.1}, "mAP@10_equal": 60.0,
                  "mAP@10_fitted": 70.0, "cross_fitted": {"fused - best pair": {"vs": "text+table", "diff": -1.25}}}})
    (ck / "train_metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.session_state["ckpt_dir"] = str(ck)
    at.run()
    goto(at, "7_Training")
    no_exception(at)
    spec = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                if json.loads(c.proto.spec)["layout"]["title"]["text"] == "Loss per task")
    mfp = next(t for t in spec["data"] if t.get("name") == "mfp")
    assert 0.0 not in [v for v in mfp["y"] if v is not None]
    val = [t for t in spec["data"] if t.get("name") == "mfp (validation)"]
    assert val and val[0]["y"] == [0.4] and val[0]["x"] == [9]
    assert at.slider(key="tr_smooth").value > 1 or len(lines) < 40  # 10 steps: window 1 is the sensible one
    card = [e for e in at.main.expander if e.label.startswith("Model card")]
    assert card and not card[0].proto.expanded
    fit = [c.value for c in at.caption if c.value.startswith("Fusion weights fitted on dev")]
    assert fit and "table 0.1" in fit[0] and "70.0 fitted" in fit[0] and "fused - best pair (text+table) -1.25" in fit[0]


# ---------------------------------------------------------------- 6. map, 7. contributions
def test_map_colours_lasso_markers_and_method_remembered(setup):
    at = new_app()
    open_first_gallery_product(at)
    goto(at, "4_Embedding_map")
    no_exception(at)
    spec = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if json.loads(c.proto.spec)["layout"].get("dragmode"))
    assert spec["layout"]["dragmode"] == "lasso"
    catalog = [t for t in spec["data"] if not t["name"].startswith(("yours", "▶"))]
    colours = [t["marker"]["color"] for t in catalog if t["name"] != "(other)"]
    assert len(set(colours)) == len(colours)  # one distinct colour per legend entry
    current = [t for t in spec["data"] if t["name"].startswith("▶ current")]
    assert len(current) == 1 and current[0]["marker"]["color"] == "gold"
    at.selectbox(key="map_color").set_value("missing pattern")
    at.run()
    spec = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if json.loads(c.proto.spec)["layout"].get("dragmode"))
    assert "T text" in spec["layout"]["legend"]["title"]["text"]
    at.segmented_control(key="map_method").set_value("umap")
    at.run()
    goto(at, "6_Retrieval")
    goto(at, "4_Embedding_map")
    no_exception(at)
    assert at.segmented_control(key="map_method").value == "umap"


def test_contributions_headline_names_the_top_modality_and_one_default_metric(setup):
    from core.model.catalog import Catalog
    from core.explore.contributions import modality_contributions
    from core.explore.explorer import Explorer

    at = new_app()
    open_first_gallery_product(at)
    goto(at, "5_Modality_contributions")
    no_exception(at)
    entry = at.session_state["products"][at.session_state["current"]]
    ex = Explorer.load(setup.checkpoint, "cpu")
    cat = Catalog.load(setup.catalog)
    res = modality_contributions(ex.model, entry["features"], cat, k=min(10, len(cat) - 1),
                                 category=entry["product"].category, product_id=entry["product"].id)
    top = max(res.shapley["similarity"], key=res.shapley["similarity"].get)
    assert at.subheader[0].value == f"For this product, {top} matters most"
    bars = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "Contributions" in json.loads(c.proto.spec)["layout"]["title"]["text"])
    assert len(bars["data"]) == 1
    at.toggle(key="ct_all").set_value(True)
    at.run()
    bars = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "Contributions" in json.loads(c.proto.spec)["layout"]["title"]["text"])
    assert len(bars["data"]) >= 2


def test_bench_times_a_gallery_click_to_the_scores(setup):
    from core.explore.app_bench import gallery_click

    r = gallery_click(str(setup.checkpoint), str(setup.manifest), None)
    assert "error" not in r, r.get("error")
    assert r["page_after_click"].startswith("Modality scores") and len(r["clicks_s"]) >= 1
    assert 0 < r["gallery_click_to_S_s"] <= max(r["clicks_s"])


def test_catalog_wide_contributions_survive_a_rerun(setup):
    # the cached catalog-wide view must not replay an element of an earlier run (CacheReplayClosureError)
    at = new_app()
    open_first_gallery_product(at)
    goto(at, "5_Modality_contributions")
    at.slider(key="ct_per").set_value(1)
    at.slider(key="ct_maxc").set_value(2)
    at.toggle(key="ct_wide").set_value(True)
    at.run()
    no_exception(at)
    at.run()  # served from the cache now
    no_exception(at)
    assert any(json.loads(c.proto.spec)["layout"]["title"]["text"] == "Mean Shapley (neighbour similarity)"
               for c in at.get("plotly_chart"))
