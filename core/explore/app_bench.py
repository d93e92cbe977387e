"""App timings (`python -m core.bench app`), each measured in a fresh interpreter through Streamlit's AppTest:
`bench_app` (upload to S, page switches, map) runs `time_app`, `catalog_check_render` runs
`render_catalog_check`, `gallery_click` runs `click_gallery` (this module run as
`python -m core.explore.app_bench app|catalog-check|gallery ARGS`).

Module-level imports stay light (no torch, no Streamlit): the fresh interpreter's cold start is what is timed.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb() -> float:
    """Current resident memory in MiB (peak where /proc is missing)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_app(root: str, t_start: float, media: dict[str, str]) -> dict:
    """Seconds a user waits in the app at `root` (AppTest): cold start (since `t_start`, the parent's clock
    before this interpreter started), upload to S three times, page switches, the embedding map; and RSS."""
    from streamlit.testing.v1 import AppTest

    out: dict = {}

    def run(at) -> float:
        t = time.perf_counter(); at.run(); dt = time.perf_counter() - t
        if at.exception:
            raise SystemExit("app raised: " + at.exception[0].value)
        return dt

    at = AppTest.from_file(os.path.join(root, "app.py"), default_timeout=600)
    run(at)
    out["cold_start_s"] = time.time() - t_start  # fresh interpreter: imports + model + backbones + first page
    ups = []
    for rep in range(3):  # three separate products: the first, and the median a user meets
        at.switch_page("pages/1_Upload_and_inspect.py"); run(at)
        at.file_uploader(key="up_images").set_value([("product.png", open(media["image"], "rb").read(), "image/png")])
        at.file_uploader(key="up_video").set_value(("product.mp4", open(media["video"], "rb").read(), "video/mp4"))
        at.file_uploader(key="up_audio").set_value(("product.wav", open(media["audio"], "rb").read(), "audio/wav"))
        at.file_uploader(key="up_table_file").set_value(("table.csv", open(media["table"], "rb").read(), "text/csv"))
        at.text_input(key="up_title").input(f"Benchmark product {rep + 1}"); run(at)
        at.button(key="up_submit").click()
        t_up = run(at)
        at.switch_page("pages/2_Modality_scores.py")
        ups.append(t_up + run(at))
    out["upload_to_S_first_s"] = ups[0]
    out["upload_to_S_s"] = sorted(ups)[1]
    out["upload_to_S_runs_s"] = [round(u, 3) for u in ups]
    out["present"] = at.session_state["products"][at.session_state["current"]]["decoded"].present()
    sw = []
    for p in ["7_Training", "6_Retrieval", "2_Modality_scores", "7_Training", "2_Modality_scores"]:
        at.switch_page(f"pages/{p}.py"); sw.append(run(at))
    out["page_switch_s"] = sorted(sw)[len(sw) // 2]
    at.switch_page("pages/4_Embedding_map.py"); out["map_pca_first_s"] = run(at)
    at.segmented_control(key="map_method").set_value("umap"); out["map_umap_first_s"] = run(at)
    out["map_umap_cached_s"] = run(at)
    out["rss_mb"] = round(_rss_mb(), 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def render_catalog_check(page: str) -> dict:
    """The Catalog check page opened first, then rerun, in this (fresh) interpreter; `imports_s` apart."""
    t = time.perf_counter()
    import appkit  # noqa: F401 - what any first page of a new server imports (torch included)
    from . import catalog_check, explorer  # noqa: F401
    from streamlit.testing.v1 import AppTest
    imports = time.perf_counter() - t
    t = time.perf_counter()
    at = AppTest.from_file(page, default_timeout=300)
    at.run()
    first = time.perf_counter() - t
    t = time.perf_counter()
    at.run()
    again = time.perf_counter() - t
    return {"imports_s": round(imports, 2), "first_render_s": round(first, 2), "rerun_s": round(again, 2),
            "rows_shown": len(at.dataframe[0].value),
            "exception": [str(e.value) for e in at.exception], "errors": [e.value for e in at.error]}


def click_gallery(app: str) -> dict:
    """The home page in a new session, then a click on a gallery product until its scores page has run;
    three products, each in a fresh session (the process's model cache is shared, as on a server)."""
    from streamlit.testing.v1 import AppTest

    def home():
        at = AppTest.from_file(app, default_timeout=600)
        at.run()
        return at, [b.key for b in at.button if str(b.key or "").startswith("gal_")]

    t = time.perf_counter()
    at, keys = home()
    first_home = time.perf_counter() - t
    if not keys:
        raise SystemExit("no gallery on the home page: the manifest has no val product in the catalog")
    clicks = []
    for k in keys[:3]:  # the first click and the median
        at, _ = home()
        t = time.perf_counter()
        [x for x in at.button if x.key == k][0].click()
        at.run()
        clicks.append(time.perf_counter() - t)
        if at.exception:
            raise SystemExit("app raised: " + at.exception[0].value)
    return {"home_s": round(first_home, 2), "gallery_click_to_S_s": round(sorted(clicks)[len(clicks) // 2], 2),
            "clicks_s": [round(c, 2) for c in clicks], "page_after_click": at.title[0].value}


def _child(*args: str) -> list[str]:
    """The command line of a fresh interpreter running one of this module's timings."""
    return [sys.executable, "-m", "core.explore.app_bench", *args]


BENCH_TARGETS = {"cold_start_s": 15.0, "upload_to_S_s": 2.0, "page_switch_s": 0.5, "map_pca_first_s": 1.0,
                 "map_umap_first_s": 30.0, "rss_mb": 3072.0}


def bench_app(checkpoint_dir: str | Path | None = None, catalog_size: int = 3000, device: str = "cpu",
              workdir: str | Path | None = None) -> dict:
    """Time the app the way a user meets it (Streamlit AppTest in a fresh interpreter, so script
    execution is measured, not browser painting): cold start to the home page with the model loaded;
    uploading a product with all five modalities (image, 8 s video with sound, 8 s audio, table) to its
    S matrix shown, three times as three products (the first and the median are reported); switching
    pages with the cached model (median); the embedding map of `catalog_size` products with PCA and UMAP
    (first time, then cached); the app process RSS.

    `checkpoint_dir`: default checkpoints/scale-shop3k-small; when it is missing, a randomly initialized
    `small` model is saved to a temp folder (same size and speed as the trained one). The map's catalog
    is the checkpoint's catalog.npz when it has >= catalog_size products, else the model's embeddings of
    `catalog_size` random shop3k-shaped feature sets (timing only: their positions mean nothing).
    """
    import subprocess

    from ..model.checkpoint import save_checkpoint
    from ..model.config import get_config
    from ..model.scale import SCALE
    import numpy as np
    import torch

    from ..errors import ScaleError
    from ..model.catalog import Catalog
    from .explorer import load_model
    from ..data.synth import COLORS, draw_shape, spin_frames, tone, write_audio, write_image, write_video

    root = Path(__file__).resolve().parents[2]
    work = Path(workdir or tempfile.mkdtemp(prefix="scale-bench-app-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = Path(checkpoint_dir) if checkpoint_dir else root / "checkpoints" / "scale-shop3k-small"
    notes = []
    model = None
    if not (ckpt / "config.json").is_file():
        notes.append(f"{ckpt} missing: timed a randomly initialized 'small' model")
        torch.manual_seed(0)
        model = SCALE(get_config("small"), pretrained=False).eval()
        ckpt = work / "ckpt"
        save_checkpoint(model, ckpt)
    catalog = ckpt / "catalog.npz"
    n_have = len(Catalog.load(catalog)) if catalog.is_file() else 0
    if n_have < 0.85 * catalog_size:  # shop3k's 2,682 products count as "about 3,000"
        from ..model.catalog import embed_products

        model = model or load_model(ckpt, "cpu")
        cached = work / "catalog.npz"
        if not (cached.is_file() and len(Catalog.load(cached)) == catalog_size):
            rng = np.random.default_rng(0)
            dims = model.cfg.feature_dims
            # short random products: the map timing depends on the number of rows, not on their content
            items = [{"id": f"bench-{i:05d}", "category": f"cat{i % 20}", "source": "bench",
                      "text.ids": np.r_[101, rng.integers(999, 30000, 14), 102].astype(np.int32),
                      "image.tokens": rng.standard_normal((50, dims["image"])).astype(np.float16),
                      "image.boxes": np.tile(np.float32([0, 0, 1, 1, 1]), (50, 1)),
                      "audio.patches": rng.standard_normal((8, dims["audio"])).astype(np.float16)}
                     for i in range(catalog_size)]
            embed_products(model, items, batch_size=100).save(cached)
        catalog = cached
        notes.append(f"map catalog: {catalog_size} random products (text, image, audio) embedded by the model")
        n_have = catalog_size
    media = {"image": str(write_image(work / "p.png", draw_shape("circle", COLORS["red"], 480))),
             "video": str(write_video(work / "p.mp4", spin_frames("circle", COLORS["red"], 8.0, fps=12, size=256),
                                      audio=tone(330.0, 8.0))),
             "audio": str(write_audio(work / "p.wav", tone(440.0, 8.0)))}
    (work / "t.csv").write_text("key,value\ncolor,Red\nshape,circle\nsize,M\nmaterial,Felt\n")
    media["table"] = str(work / "t.csv")
    env = dict(os.environ, SCALE_CHECKPOINT=str(ckpt), SCALE_CATALOG=str(catalog), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1",  # the app reads only under its roots (core.explore.roots): add these two
               SCALE_ROOTS=os.pathsep.join(filter(None, [os.environ.get("SCALE_ROOTS"), str(ckpt), str(Path(catalog).parent)])))
    if device == "cpu":  # hide any GPU; other devices keep the caller's CUDA_VISIBLE_DEVICES
        env["CUDA_VISIBLE_DEVICES"] = ""
    t0 = time.time()
    proc = subprocess.run(_child("app", str(root), repr(t0), json.dumps(media)),
                          cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if line is None:
        raise ScaleError(f"app benchmark failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    res = json.loads(line[len("BENCH_JSON "):])
    res.update(catalog_products=n_have, checkpoint=str(ckpt), device=device, method="streamlit AppTest, fresh interpreter",
               notes=notes, targets=BENCH_TARGETS,
               meets_targets={k: (res[k] <= v) for k, v in BENCH_TARGETS.items() if isinstance(res.get(k), (int, float))})
    for k, v in list(res.items()):
        if isinstance(v, float):
            res[k] = round(v, 3)
    return res


def catalog_check_render(catalog: str, checkpoint: str | None, manifest: str | None) -> dict:
    """The Catalog check page opened first in a fresh interpreter (empty caches: catalog load, manifest join,
    per-pair scores, thumbnails), then rerun; AppTest measures script execution, not browser painting.
    `imports_s` (appkit, torch, core) is reported apart: a server pays it once, for whichever page opens first."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    paths = [Path(catalog).resolve()] + ([Path(checkpoint).resolve()] if checkpoint else []) + (
        [Path(manifest).resolve()] if manifest else [])
    env = dict(os.environ, SCALE_CATALOG=str(paths[0]),
               SCALE_ROOTS=os.pathsep.join(filter(None, [os.environ.get("SCALE_ROOTS")] + [str(p.parent) for p in paths])))
    if checkpoint:
        env["SCALE_CHECKPOINT"] = str(Path(checkpoint).resolve())
    if manifest:
        env["SCALE_MANIFEST"] = str(Path(manifest).resolve())
    run = subprocess.run(_child("catalog-check", str(root / "pages" / "8_Catalog_check.py")), env=env, cwd=root,
                         capture_output=True, text=True, timeout=600)
    if run.returncode:
        return {"error": run.stderr[-2000:]}
    import numpy as _np

    with _np.load(catalog, allow_pickle=False) as z:
        n = len(z["ids"])
    return dict(json.loads(run.stdout.strip().splitlines()[-1]), catalog_products=n)


def gallery_click(checkpoint: str | None, manifest: str | None, features: str | None) -> dict:
    """The demo path in a fresh interpreter: the home page (model load included), then a click on a gallery
    product until its Modality scores page has run (product loaded, features from the cache when `features`
    holds it, one forward pass, S against the catalog). AppTest measures script execution, not painting."""
    import subprocess

    if not (checkpoint and manifest):
        return {"error": "--gallery needs --checkpoint DIR and --manifest M (a manifest with val products)"}
    root = Path(__file__).resolve().parents[2]
    ck, mf = Path(checkpoint).resolve(), Path(manifest).resolve()
    env = dict(os.environ, SCALE_CHECKPOINT=str(ck), SCALE_CATALOG=str(ck / "catalog.npz"), SCALE_MANIFEST=str(mf),
               SCALE_ROOTS=os.pathsep.join(filter(None, [os.environ.get("SCALE_ROOTS"), str(ck.parent), str(mf.parent)])))
    if features:
        env["SCALE_FEATURES"] = str(Path(features).resolve())
    run = subprocess.run(_child("gallery", str(root / "app.py")), env=env, cwd=root,
                         capture_output=True, text=True, timeout=1200)
    if run.returncode:
        return {"error": run.stderr[-2000:]}
    return json.loads(run.stdout.strip().splitlines()[-1])

if __name__ == "__main__":  # the fresh interpreter the functions above start: a timing's name, then its arguments
    _which, _args = sys.argv[1], sys.argv[2:]
    if _which == "app":  # ROOT T0 MEDIA_JSON
        print("BENCH_JSON " + json.dumps(time_app(_args[0], float(_args[1]), json.loads(_args[2]))))
    elif _which == "catalog-check":  # PAGE
        print(json.dumps(render_catalog_check(_args[0])))
    elif _which == "gallery":  # APP
        print(json.dumps(click_gallery(_args[0])))
    else:
        raise SystemExit(f"unknown timing {_which!r}: use app, catalog-check or gallery")
