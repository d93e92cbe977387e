"""AppTest checks of the demo-ready explorer (issue #11 parts 3-9), against the tiny checkpoint of app_fixtures."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app_fixtures import tiny_setup

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(featurizer):
    s = tiny_setup(featurizer)
    env = {"SCALE_CHECKPOINT": str(s.checkpoint), "SCALE_CATALOG": str(s.catalog), "SCALE_MANIFEST": str(s.manifest),
           "SCALE_ROOTS": str(s.checkpoint.parent)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield s
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def new_app() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    return at


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"pages/{page}.py")
    at.run()
    return at


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


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
    from core.gallery import choose_gallery
    from core.records import Product

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
