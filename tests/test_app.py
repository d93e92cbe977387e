"""Streamlit AppTest of every page, driven against a tiny checkpoint built in a temporary folder.

Uploads go through AppTest's file_uploader API (streamlit 1.67 has it), so they take the same code path
as a browser upload.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app_fixtures import app_environment, goto, new_app, no_exception, tiny_setup  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["1_Upload_and_inspect", "2_Modality_scores", "3_Masked_prediction", "4_Embedding_map",
         "5_Modality_contributions", "6_Retrieval", "7_Training", "8_Catalog_check", "9_Use_my_catalog"]


@pytest.fixture(scope="module")
def setup(featurizer):
    with app_environment(tiny_setup(featurizer)) as s:  # the app reads only under its roots (core.explore.roots)
        yield s


@pytest.fixture(scope="module")
def explorer(setup):
    from core.explore.explorer import Explorer

    return Explorer.load(setup.checkpoint, "cpu")


def chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _z(m: np.ndarray) -> list:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in m]


def _media(setup):
    """Bytes of one generated product's image, video (with sound) and table."""
    p = setup.products[0]
    return (Path(p.images[0]).read_bytes(), Path(p.video).read_bytes(),
            "key,value\n" + "\n".join(f"{k},{v}" for k, v in p.attributes.items()))


def test_home_shows_model_catalog_and_examples(setup):
    at = new_app()
    no_exception(at)
    assert at.title[0].value == "SCALE Explorer"
    text = " ".join(s.value for s in at.success)
    assert setup.checkpoint.name in text and f"{len(setup.products)} products" in text
    assert not at.error


def test_home_without_checkpoint_says_how_to_make_one(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("SCALE_ROOTS", os.pathsep.join([str(setup.checkpoint.parent), str(tmp_path)]))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["ckpt_dir"] = str(tmp_path / "nope")  # under a root, so "not found" may be said
    at.run()
    no_exception(at)
    msg = at.error[0].value
    assert "nope" in msg and "not found" in msg and "python -m core.train" in msg


def test_upload_image_video_table_then_scores_match_core(setup, explorer):
    img, vid, table = _media(setup)
    at = goto(new_app(), PAGES[0])
    at.text_input(key="up_title").input("Red round badge")
    at.file_uploader(key="up_images").set_value([("badge.png", img, "image/png")])
    at.file_uploader(key="up_video").set_value(("spin.mp4", vid, "video/mp4"))
    at.file_uploader(key="up_table_file").set_value(("attrs.csv", table.encode(), "text/csv"))
    at.run()
    at.button(key="up_submit").click()
    at.run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    entry = at.session_state["products"][at.session_state["current"]]
    present = entry["decoded"].present()
    assert present == {"text": True, "table": True, "image": True, "video": True, "audio": True}  # audio = soundtrack
    assert entry["decoded"].audio_source == "video"
    goto(at, PAGES[1])
    no_exception(at)
    a = explorer.analyze(entry["features"], missing="mask")
    specs = chart_specs(at)
    np.testing.assert_allclose(np.array(specs[0]["data"][0]["z"], dtype=float), a.S, atol=1e-5)
    np.testing.assert_allclose(np.array(specs[1]["data"][0]["z"], dtype=float), a.S_prime, atol=1e-5)


def test_every_page_renders_with_an_example_and_absent_shown_as_absent(setup, explorer):
    at = goto(new_app(), PAGES[0])
    incomplete = next(i for i, p in enumerate(setup.products) if not p.audio)
    at.selectbox(key="example_pick").select_index(incomplete)
    at.run()
    at.button(key="example_load").click()
    at.run()
    no_exception(at)
    for page in PAGES[1:]:
        goto(at, page)
        no_exception(at)
        assert not at.error, (page, [e.value for e in at.error])
        assert at.caption and "What am I looking at" in at.caption[0].value
    goto(at, PAGES[1])
    spec = chart_specs(at)[0]["data"][0]
    audio = 4
    assert all(v is None for v in spec["z"][audio]) and spec["text"][audio][0] == "absent"  # grey "absent", not 0
    entry = at.session_state["products"][at.session_state["current"]]
    np.testing.assert_allclose(np.array(spec["z"], dtype=float), explorer.analyze(entry["features"]).S, atol=1e-5)
    # zero-imputation toggle: S gets a row for the absent modality
    at.toggle(key="scores_cmp_zero").set_value(True)
    at.run()
    no_exception(at)
    zspec = [s for s in chart_specs(at) if s["layout"]["title"]["text"] == "S, missing=zero"][0]["data"][0]
    assert all(v is not None for v in zspec["z"][audio])


def test_two_products_switch_and_compare(setup):
    at = goto(new_app(), PAGES[0])
    for i in (0, 1):
        at.selectbox(key="example_pick").select_index(i)
        at.run()
        at.button(key="example_load").click()
        at.run()
        no_exception(at)
    names = list(at.session_state["products"])
    assert len(names) == 2 and at.session_state["current"] == names[1]
    at.sidebar.selectbox(key="current_pick").set_value(names[0])
    at.run()
    assert at.session_state["current"] == names[0]
    goto(at, PAGES[1])
    no_exception(at)
    assert at.selectbox(key="compare").value == names[1]
    titles = [s["layout"]["title"]["text"] for s in chart_specs(at)]
    assert f"S · {names[0]}" in titles and f"S · {names[1]}" in titles


def test_masked_prediction_masks_exactly_the_chosen_tokens(setup):
    at = goto(new_app(), PAGES[0])
    at.button(key="example_load").click()
    at.run()
    goto(at, PAGES[2])
    no_exception(at)
    name = at.session_state["current"]
    at.multiselect(key=f"mp_text:{name}").set_value([1, 2])
    at.multiselect(key=f"mp_table:{name}").set_value([0])
    at.run()
    no_exception(at)
    df = at.dataframe[0].value
    assert sorted(df[df.modality == "text"].position.tolist()) == [1, 2]
    assert len(df[df.modality == "table"]) >= 1
    at.radio(key="mp_mode").set_value("Predict one modality from the others")
    at.run()
    at.selectbox(key="mp_drop").set_value("image")
    at.run()
    no_exception(at)
    assert any("Mean reconstruction MSE of image" in m.label for m in at.metric)


def test_bad_uploads_show_errors_and_the_rest_works(setup):
    img, _, _ = _media(setup)
    at = goto(new_app(), PAGES[0])
    at.text_input(key="up_title").input("Still has a title")
    at.file_uploader(key="up_images").set_value([("notes.png", b"this is a text file, not a picture", "image/png")])
    at.file_uploader(key="up_video").set_value(("broken.mp4", os.urandom(4096), "video/mp4"))
    at.file_uploader(key="up_audio").set_value(("silence.wav", b"", "audio/wav"))
    big = "key,value\n" + "\n".join(f"k{i},v{i}" for i in range(10_000))
    at.file_uploader(key="up_table_file").set_value(("huge.csv", big.encode(), "text/csv"))
    at.run()
    at.button(key="up_submit").click()
    at.run()
    no_exception(at)
    errors = " ".join(e.value for e in at.error)
    for name in ("notes.png", "broken.mp4", "silence.wav", "huge.csv"):
        assert name in errors, (name, errors)
    entry = at.session_state["products"][at.session_state["current"]]
    assert entry["decoded"].present() == {"text": True, "table": False, "image": False, "video": False, "audio": False}
    for page in PAGES[1:3]:  # the session is alive: the text-only product still works
        goto(at, page)
        no_exception(at)


def test_training_page_shows_the_log_and_evaluation_and_png_export(setup):
    at = goto(new_app(), PAGES[6])
    no_exception(at)
    assert any("steps from" in c.value for c in at.caption)
    titles = [s["layout"]["title"]["text"] for s in chart_specs(at)]
    assert "Loss per task" in titles and "Learning rate" in titles
    metrics = json.loads((setup.checkpoint / "metrics.json").read_text())
    shown = at.dataframe[-1].value
    assert shown.loc["retrieval_fused / mAP@1", "value"] == pytest.approx(metrics["retrieval_fused"]["mAP@1"])
    at.toggle(key="png-training").set_value(True)
    at.run()
    no_exception(at)
    assert at.get("download_button") and (any(b.proto.label == "Figure (PNG)" for b in at.get("download_button"))
                                          or any("HTML only" in c.value for c in at.caption))


def test_one_forward_pass_per_product_and_missing_mode():
    """Pages share a product's analysis: revisiting Scores or the map does not rerun the model."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import appkit as ak

    class CountingExplorer:
        model = object()
        calls: list = []

        def analyze(self, feats, missing="mask"):
            self.calls.append(missing)
            return (feats["id"], missing)

    ex, entry = CountingExplorer(), {"features": {"id": "p1"}}
    assert ak.analysis(ex, entry) == ("p1", "mask")
    assert ak.analysis(ex, entry, "mask") == ("p1", "mask")
    assert ak.analysis(ex, entry, "zero") == ("p1", "zero")
    assert ex.calls == ["mask", "zero"]


def test_use_my_catalog_reports_a_full_disk_without_a_traceback_or_a_path(setup, tmp_path, monkeypatch):
    import errno
    import sys

    sys.path.insert(0, str(ROOT))
    import appkit as ak

    mine = setup.checkpoint.parent / "myshop-full"
    mine.mkdir(exist_ok=True)
    man = mine / "manifest.jsonl"
    man.write_text("\n".join(setup.manifest.read_text().splitlines()[:3]) + "\n")
    where = tmp_path / "work" / "features" / "shard-00000.safetensors"

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(where))
    monkeypatch.setattr(ak, "build_my_catalog", full)
    ak._found.clear()
    at = goto(new_app(), "9_Use_my_catalog")
    at.selectbox(key="mc_manifest").set_value(str(man.resolve()))
    at.run()
    at.button(key="mc_run").click()
    at.run()
    no_exception(at)
    shown = " ".join(e.value for e in at.error)
    assert "No space left on device" in shown and "free disk space" in shown and str(tmp_path) not in shown
    assert "my_catalog" not in at.session_state


def test_use_my_catalog_errors_name_the_build_folder_without_the_server_path(setup, tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(ROOT))
    import appkit as ak
    from core.errors import CacheError

    mine = setup.checkpoint.parent / "myshop-full2"
    mine.mkdir(exist_ok=True)
    (mine / "manifest.jsonl").write_text("\n".join(setup.manifest.read_text().splitlines()[:3]) + "\n")
    work = tmp_path / "work"
    monkeypatch.setenv("SCALE_WORK", str(work))

    def full(*_a, **_k):
        raise CacheError(f"could not write {work}/manifest-x/features: No space left on device (0 MB free there).")
    monkeypatch.setattr(ak, "build_my_catalog", full)
    ak._found.clear()
    at = goto(new_app(), "9_Use_my_catalog")
    at.selectbox(key="mc_manifest").set_value(str((mine / "manifest.jsonl").resolve()))
    at.run()
    at.button(key="mc_run").click()
    at.run()
    no_exception(at)
    shown = " ".join(e.value for e in at.error)
    assert "could not write manifest-x/features: No space left on device" in shown and str(tmp_path) not in shown


def test_use_my_catalog_then_pages_search_it_through_the_index(setup, tmp_path, monkeypatch):
    """A manifest under the roots becomes this session's catalog (its ANN index above the threshold, 3 here);
    another session keeps the configured catalog."""
    import sys

    sys.path.insert(0, str(ROOT))
    import appkit as ak

    mine = setup.checkpoint.parent / "myshop"
    mine.mkdir(exist_ok=True)
    lines = setup.manifest.read_text().splitlines()[:5]
    man = mine / "manifest.jsonl"
    man.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("SCALE_WORK", str(tmp_path / "work"))  # features and embeddings go here, not into the repo
    monkeypatch.setenv("SCALE_EXACT_BELOW", "3")
    ak._found.clear()  # the pickers' list is cached for 30 s; the manifest is new
    at = goto(new_app(), "9_Use_my_catalog")
    no_exception(at)
    at.selectbox(key="mc_manifest").set_value(str(man.resolve()))
    at.run()
    at.button(key="mc_run").click()
    at.run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["my_catalog"] == str(man.resolve())
    assert any("5 products embedded" in m.value for m in at.success)
    assert any("my catalog" in m.value and "5 products" in m.value for m in at.sidebar.info)
    assert list((tmp_path / "work").glob("manifest-*/features/index.json"))  # features on the server, resumable
    goto(at, PAGES[0])
    at.selectbox(key="example_pick").select_index(1)  # the examples now come from my manifest
    at.run()
    at.button(key="example_load").click()
    at.run()
    goto(at, "6_Retrieval")
    no_exception(at)
    assert any("FAISS IVF index over 5 products" in c.value for c in at.caption), [c.value for c in at.caption]
    titles = chart_specs(at)[-1]["data"][0]["y"]
    mine_titles = {json.loads(l)["title"] for l in lines}
    assert len(titles) == 4 and all(t.split(". ", 1)[1] in mine_titles for t in titles)  # itself left out
    goto(at, "4_Embedding_map")
    no_exception(at)
    assert any("FAISS IVF index over 5 products" in c.value for c in at.caption)
    other = new_app()  # another session: the configured catalog
    assert f"{len(setup.products)} products" in " ".join(m.value for m in other.success)
    at.sidebar.button(key="my_catalog_off").click()
    at.run()
    assert "my_catalog" not in at.session_state
