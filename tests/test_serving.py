"""The app as a web service for remote users (issue #10): paths only under the roots, one refusal message,
no free log viewer, upload folders that go away, safe product ids, no server paths in downloads, and a
.streamlit/config.toml that hides error details and caps uploads."""
from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app_fixtures import app_environment
from core.explore import roots as rt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests import appkit the way the pages do


# ---------------------------------------------------------------- core.explore.roots
@pytest.fixture()
def tree(tmp_path):
    """root/ with a checkpoint, a catalog, a manifest, a training log and a secrets CSV; outside/ beside it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "runs" / "m1").mkdir(parents=True)
    (root / "runs" / "m1" / "config.json").write_text("{}")
    (root / "runs" / "m1" / "model.safetensors").write_bytes(b"")
    (root / "runs" / "m1" / "catalog.npz").write_bytes(b"")
    (root / "runs" / "m1" / "train_metrics.jsonl").write_text('{"loss": 1.0}\n')
    (root / "data").mkdir()
    (root / "data" / "manifest.jsonl").write_text("")
    (root / "data" / "rows.csv").write_text("a,b\n")
    outside.mkdir()
    (outside / "secrets.csv").write_text("db_password,hunter2\n")
    (outside / "ck").mkdir()
    (outside / "ck" / "config.json").write_text("{}")
    (outside / "ck" / "model.safetensors").write_bytes(b"")
    return root.resolve(), outside.resolve()


def _refusal(path, roots) -> str:
    with pytest.raises(rt.PathRefused) as e:
        rt.allowed(path, roots)
    return str(e.value)


def test_outside_the_roots_is_refused_with_one_message_whether_it_exists_or_not(tree):
    root, outside = tree
    msgs = {_refusal(p, [root]) for p in (outside / "secrets.csv", outside / "no-such-file", "/etc", "/no/such/dir",
                                          "", "a\x00b")}
    assert msgs == {rt.REFUSED}
    assert "secrets" not in rt.REFUSED and "exist" not in rt.REFUSED
    assert rt.allowed(root / "runs" / "m1", [root]) == root / "runs" / "m1"
    assert rt.allowed(root / "not-yet", [root]) == root / "not-yet"  # inside: allowed even before it exists


def test_dotdot_and_symlink_escapes_are_refused(tree):
    root, outside = tree
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "data" / "leak.csv").symlink_to(outside / "secrets.csv")
    for p in (root / ".." / "outside" / "secrets.csv", root / "runs" / ".." / ".." / "outside",
              root / "link", root / "link" / "secrets.csv", root / "data" / "leak.csv"):
        assert _refusal(p, [root]) == rt.REFUSED, p
    assert rt.allowed(root / "runs" / ".." / "data" / "manifest.jsonl", [root]) == root / "data" / "manifest.jsonl"
    # discovery offers nothing reached through the links either
    assert rt.find_checkpoints([root]) == [root / "runs" / "m1"]
    assert rt.find_manifests([root]) == [root / "data" / "manifest.jsonl"]  # not rows.csv, not the log, not leak.csv
    assert rt.find_catalogs([root]) == [root / "runs" / "m1" / "catalog.npz"]


def test_roots_come_from_the_defaults_and_the_env_variable(tree, monkeypatch):
    root, outside = tree
    monkeypatch.setenv(rt.ROOTS_ENV, os.pathsep.join([str(root), str(outside / "missing")]))
    rs = rt.configured_roots()
    assert root in rs and (ROOT / "checkpoints").resolve() in rs and outside / "missing" not in rs
    assert rt.label(root / "runs" / "m1", rs) == "root/runs/m1"
    assert rt.scrub(f"{root}/data/x.png: broken", rs) == "root/data/x.png: broken"


# ---------------------------------------------------------------- uploads
@pytest.fixture()
def bare_explorer(featurizer, tmp_path):
    from core.explore.explorer import Explorer

    return Explorer(torch.nn.Linear(1, 1), featurizer, upload_root=tmp_path / "up")


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.parametrize("bad", ["../../x", "ABS", "a\x00b/../../y", ".."])
def test_product_id_cannot_write_outside_the_upload_folder(bare_explorer, tmp_path, bad):
    from core.data.synth import COLORS, draw_shape, write_image

    png = write_image(tmp_path / "src.png", draw_shape("circle", COLORS["red"], 64)).read_bytes()
    if bad == "ABS":  # an absolute path inside tmp_path, so the old code's escape lands somewhere harmless
        bad = str(tmp_path / "escaped")
    up = (tmp_path / "up").resolve()
    before = set(_files_under(tmp_path))
    product, decoded, errors = bare_explorer.product_from_inputs("t", images=[("a.png", png)], product_id=bad)
    new = set(_files_under(tmp_path)) - before
    assert new and all(p.resolve().is_relative_to(up) for p in new), new
    assert Path(product.images[0]).resolve().parent.parent == up  # one plain folder under the upload root
    assert "/" not in product.id and "\x00" not in product.id and not product.id.startswith(".")
    assert decoded.present()["image"] and not errors


def test_an_upload_the_server_cannot_store_is_left_out_and_the_rest_works(bare_explorer, tmp_path, monkeypatch):
    """A full disk while saving the video: that part is left out with a message naming the user's file (no
    server path) and the fix; no half file stays; the title and the image still work."""
    import errno

    from core.data.synth import COLORS, draw_shape, write_image

    png = write_image(tmp_path / "src.png", draw_shape("circle", COLORS["red"], 64)).read_bytes()
    real = Path.write_bytes

    def full_for_video(self, data):
        if self.name.startswith("video-"):
            real(self, data[:10])  # what a full disk leaves: part of the file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)
    monkeypatch.setattr(Path, "write_bytes", full_for_video)
    product, decoded, errors = bare_explorer.product_from_inputs(
        "red ball", images=[("ball.png", png)], video=("promo.mp4", b"\x00" * 4096))
    assert product.video is None and decoded.present()["image"] and decoded.present()["text"]
    assert set(errors) == {"video"} and errors["video"].startswith("promo.mp4: the server could not store this file")
    assert "No space left on device" in errors["video"] and "Fix:" in errors["video"]
    assert str(tmp_path) not in errors["video"]
    assert not [p for p in _files_under(tmp_path / "up") if p.name.startswith("video-")]


def test_upload_space_and_explorer_folders_are_removed_with_their_owner(featurizer):
    from core.explore.explorer import Explorer, UploadSpace

    space = UploadSpace()
    (space.path / "x.png").write_bytes(b"1")
    folder = space.path
    del space
    gc.collect()
    assert not folder.exists()

    ex = Explorer(torch.nn.Linear(1, 1), featurizer)
    ex.product_from_inputs("only a title")
    folder = ex.upload_root
    assert folder.is_dir() and folder.name.startswith("scale-uploads-")
    del ex
    gc.collect()
    assert not folder.exists()


# ---------------------------------------------------------------- the training-log reader
def test_training_log_reader_keeps_only_the_trainers_numbers(tmp_path):
    from core.explore.training_log import read_train_log

    (tmp_path / "train_metrics.jsonl").write_text("\n".join([
        '{"note": "db_password hunter2"}',
        '{"step": 1, "epoch": 0, "lr": 0.1, "loss": {"total": 2.0, "who": "hunter2"}}',
        '{"step": 2, "epoch": 0, "val": {"total": 1.5, "secret": "hunter2"}, "extra": "hunter2"}',
        '{"step": 2, "epoch": 1, "fusion": {"fusion_weights": {"text": 1.0, "image": 0.5, "hunter2": 1}, "mAP@10_fitted": 74.4,'
        ' "note": "hunter2", "cross_fitted": {"fused - best pair": {"vs": "text+image", "diff": -1.3},'
        ' "fused - best single": {"vs": "hunter2", "diff": 0.1}}}}',
    ]) + "\n")
    (tmp_path / "notes.jsonl").write_text('{"loss": 1.0, "db_password": "hunter2"}\n')
    log = read_train_log(tmp_path)
    assert log.steps.tolist() == [1] and log.losses == {"total": pytest.approx([2.0])}
    assert log.val == [{"step": 2, "epoch": 0, "val": {"total": 1.5}}]
    assert log.fusion == {"weights": {"text": 1.0, "image": 0.5}, "mAP@10_fitted": 74.4,
                          "cross_fitted": {"fused - best pair": {"vs": "text+image", "diff": -1.3}}}
    assert "hunter2" not in json.dumps(log.val) + log.frame().to_csv() + json.dumps(log.fusion)
    assert read_train_log(tmp_path / "notes.jsonl") is None  # a file is read only under a log's name


# ---------------------------------------------------------------- .streamlit/config.toml
def test_config_hides_error_details_and_caps_uploads():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["client"]["showErrorDetails"] in ("none", False)
    cap = cfg["server"]["maxUploadSize"]
    assert isinstance(cap, int) and 1 <= cap < 200  # below Streamlit's default of 200 MB


# ---------------------------------------------------------------- the app (AppTest)
@pytest.fixture(scope="module")
def app_env(setup):
    with app_environment(setup):
        yield setup


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "error", "info", "warning", "success", "text", "title",
                                  "header", "subheader") for e in getattr(at, kind)]
    parts += [df.value.to_csv() for df in at.dataframe]
    parts += [w.label + " " + " ".join(w.options) for w in at.selectbox]  # what the browser gets (format_func)
    return "\n".join(str(p) for p in parts)


@pytest.mark.parametrize("key", ["ckpt_dir", "catalog_path", "manifest_path"])
def test_app_refuses_paths_outside_the_roots_alike(app_env, tmp_path, key):
    secret = tmp_path / "secrets.csv"
    secret.write_text("id,title\np1,db_password hunter2\n")
    shown = []
    for path in (str(secret), "/etc", str(tmp_path / "no-such-folder")):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.session_state[key] = path
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        shown.append([e.value for e in at.error])
        assert "hunter2" not in _texts(at)
        # the refused value is replaced by the default, so the app still works on the configured checkpoint
        assert app_env.checkpoint.name in " ".join(s.value for s in at.success)
        assert at.session_state[key] != path
    assert shown[0] == shown[1] == shown[2] == [rt.REFUSED]


def test_training_page_reads_only_the_chosen_checkpoints_log(app_env, tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    shutil.copytree(app_env.checkpoint, ck)
    with open(ck / "train_metrics.jsonl", "a") as f:
        f.write('{"note": "db_password hunter2"}\n{"step": 9, "val": {"total": 1.0, "pw": "hunter2"}}\n')
    monkeypatch.setenv("SCALE_ROOTS", os.pathsep.join([str(app_env.checkpoint.parent), str(tmp_path)]))
    at = AppTest.from_file(str(ROOT / "pages" / "7_Training.py"), default_timeout=120)
    at.session_state["ckpt_dir"] = str(ck)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.text_input  # no free path box
    assert any(f"steps from `{tmp_path.name}/ck/train_metrics.jsonl`" in c.value for c in at.caption)
    text = _texts(at)
    assert "hunter2" not in text and str(tmp_path) not in text


def test_uploaders_filter_types_and_name_the_cap_and_uploads_live_in_the_session_folder(app_env):
    cap = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"]
    at = AppTest.from_file(str(ROOT / "pages" / "1_Upload_and_inspect.py"), default_timeout=120)
    at.run()
    ups = {u.proto.label: u.proto for u in at.get("file_uploader")}
    types = {label.split(" ")[0]: set(p.type) for label, p in ups.items()}
    assert types["Image(s)"] == {".jpg", ".jpeg", ".png", ".webp"}
    assert types["Video"] - {".mpeg4"} == {".mp4", ".webm", ".mov", ".avi"}  # Streamlit adds .mpeg4 to .mp4
    assert types["Audio"] == {".wav", ".flac", ".ogg", ".mp3", ".m4a"}
    assert {".csv", ".json", ".txt"} <= types["Table"]
    assert all(f"{cap} MB" in p.help for p in ups.values())

    img = Path(app_env.products[0].images[0]).read_bytes()
    at.text_input(key="up_title").input("Session-bound")
    at.file_uploader(key="up_images").set_value([("badge.png", img, "image/png")])
    at.run()
    at.button(key="up_submit").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    folder = at.session_state["upload_space"].path
    entry = at.session_state["products"][at.session_state["current"]]
    assert Path(entry["product"].images[0]).resolve().is_relative_to(folder.resolve())
    del at.session_state["upload_space"]  # what Streamlit does with a session's state when the session ends
    gc.collect()
    assert not folder.exists()


def test_session_download_has_no_server_paths(app_env, monkeypatch):
    import appkit

    captured: dict = {}
    real = appkit.downloads
    monkeypatch.setattr(appkit, "downloads", lambda name, data=None, fig=None, key=None:
                        (captured.__setitem__(name, data), real(name, data, fig, key))[1])
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/1_Upload_and_inspect.py")
    at.run()
    img = Path(app_env.products[0].images[0]).read_bytes()
    at.text_input(key="up_title").input("Uploaded")
    at.file_uploader(key="up_images").set_value([("badge.png", img, "image/png")])
    at.run()
    at.button(key="up_submit").click()
    at.run()
    at.button(key="example_load").click()  # a manifest product too: its media lie under a root
    at.run()
    at.switch_page("app.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    session = captured["session"]
    assert len(session["products"]) == 2

    def strings(o):
        if isinstance(o, dict):
            for v in o.values():
                yield from strings(v)
        elif isinstance(o, list):
            for v in o:
                yield from strings(v)
        elif isinstance(o, str):
            yield o

    found = list(strings(session))
    assert "image0-badge.png" in found  # the saved file, by name only
    assert not [s for s in found if os.path.isabs(s) or os.sep + "tmp" in s or str(app_env.checkpoint.parent) in s]
