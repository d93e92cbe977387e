"""Shared pieces of the Streamlit app (sidebar, caches, session state, figures, downloads).

Session state keys (the only state that crosses pages):
    products   dict[str, dict]  name -> {"product": Product, "decoded": Decoded, "features": dict,
                                "errors": dict[str, str], "generated": bool}
    current    str | None       name of the product the pages show (the sidebar's `current_pick` mirrors it)
    compare    str | None       a second product for side-by-side views (Modality scores)
    ckpt_dir, catalog_path, manifest_path, device   sidebar widgets (settings); the three paths are always
                                resolved paths under the roots (core.explore.roots), checked on every run
    my_catalog  str             a manifest under the roots whose embedded catalog ("Use my catalog",
                                core.explore.my_catalog) replaces the sidebar's catalog and manifest while it is
                                current for the checkpoint; checked on every run like the paths above
    upload_space UploadSpace    this session's upload folder (removed with the session)

Heavy objects (model + backbones, fitted projections, the examples folder) are in st.cache_resource;
derived data (catalog embeddings, training logs, catalog-wide contributions) in st.cache_data. Each
key includes the files' modification times, so a retrained checkpoint is picked up.
"""
from __future__ import annotations

import base64
import gc
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.explore import roots as rt
from core.model.catalog import Catalog
from core.errors import ScaleError
from core.explore.explorer import UploadSpace
from core.explore.training_log import find_train_log, read_train_log
from core.modalities import MODALITIES

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "scale-shop3k-small"
SHOP3K_MANIFEST = ROOT.parent / "shared" / "data" / "shop3k" / "manifest.jsonl"
GREY = "#d9d9d9"
log = logging.getLogger("scale.app")


# ---------------------------------------------------------------- settings
@dataclass
class Settings:
    ckpt_dir: Path
    catalog_path: Path
    manifest_path: Path | None  # None: the generated examples
    device: str
    my_catalog: Path | None = None  # the build folder (core.explore.my_catalog) when "Use my catalog" is active


def _mtime(p: Path | None) -> float:
    try:
        return p.stat().st_mtime if p else 0.0
    except OSError:
        return 0.0


def server_roots() -> list[Path]:
    """The folders the app may read (core.explore.roots: checkpoints/, ../shared/data, env SCALE_ROOTS)."""
    return rt.configured_roots()


@st.cache_data(ttl=30, show_spinner=False)
def _found(roots: tuple[str, ...]) -> dict[str, list[str]]:
    """What the pickers offer; looked up again after 30 s, so a new checkpoint shows up without a restart."""
    rs = [Path(r) for r in roots]
    return {"ckpt_dir": [str(p) for p in rt.find_checkpoints(rs)],
            "catalog_path": [str(p) for p in rt.find_catalogs(rs)],
            "manifest_path": [str(p) for p in rt.find_manifests(rs)]}


def label(path: str | Path | None) -> str:
    """A path as users see it: "<root name>/<inside the root>", never the server's absolute path."""
    return rt.label(path, server_roots()) if path else ""


def public(text: str) -> str:
    """An error message fit for a remote user: root folders by name; the session's upload folder and the
    folder where "Use my catalog" builds (SCALE_WORK) dropped."""
    from core.explore.my_catalog import work_root

    space = st.session_state.get("upload_space")
    drop = [work_root().resolve(), *([space.path] if space is not None else [])]
    return rt.scrub(str(text), server_roots(), drop)


def _env_choice(var: str, rs: list[Path]) -> str:
    """The env variable's path when it lies under a root (the operator's default); else ""."""
    v = os.environ.get(var, "")
    if not v:
        return ""
    try:
        return str(rt.allowed(v, rs))
    except rt.PathRefused:
        log.warning("%s=%s lies outside the roots %s, so it is ignored. Fix: add its folder to SCALE_ROOTS.",
                    var, v, [str(r) for r in rs])
        return ""


def _checked(key: str, default: str, rs: list[Path]) -> str:
    """The session's value for `key` when it lies under a root, else `default`. Every value passes here
    before it is used, whether it came from the picker, a test or anything else writing session state."""
    ss = st.session_state
    v = ss.get(key, default)
    if v:
        try:
            v = str(rt.allowed(v, rs))
        except rt.PathRefused:
            log.warning("refused %s=%r: outside the roots", key, v)
            ss["_refused"] = True
            v = default
    ss[key] = v  # re-assigning keeps a widget's value when another page renders it (Streamlit drops it otherwise)
    return v


def sidebar() -> Settings:
    """Checkpoint, catalog, manifest and device pickers. The choices are what lies under the roots
    (core.explore.roots); defaults: SCALE_CHECKPOINT / SCALE_CATALOG / SCALE_MANIFEST when they lie under a root,
    else the shipped checkpoint, its catalog.npz and shop3k when it is beside the repo."""
    ss = st.session_state
    rs = server_roots()
    found = _found(tuple(str(r) for r in rs))
    ckpts = found["ckpt_dir"]
    ck_default = (_env_choice("SCALE_CHECKPOINT", rs)
                  or (str(DEFAULT_CHECKPOINT.resolve()) if str(DEFAULT_CHECKPOINT.resolve()) in ckpts else "")
                  or (ckpts[0] if ckpts else str(DEFAULT_CHECKPOINT)))
    shop3k = str(SHOP3K_MANIFEST.resolve()) if SHOP3K_MANIFEST.is_file() and rt.is_allowed(SHOP3K_MANIFEST, rs) else ""
    chosen = {"ckpt_dir": _checked("ckpt_dir", ck_default, rs),
              "catalog_path": _checked("catalog_path", _env_choice("SCALE_CATALOG", rs), rs),
              "manifest_path": _checked("manifest_path", _env_choice("SCALE_MANIFEST", rs) or shop3k, rs)}
    if not chosen["ckpt_dir"]:
        chosen["ckpt_dir"] = ss["ckpt_dir"] = ck_default
    ss.setdefault("device", "auto")
    ss["device"] = ss["device"] if ss["device"] in ("auto", "cpu") else "auto"
    if ss.pop("_refused", False):
        st.error(rt.REFUSED)

    def options(key: str, blank: bool) -> list[str]:
        opts = ([""] if blank else []) + found[key]
        return opts if chosen[key] in opts else opts + [chosen[key]]

    with st.sidebar:
        names = list(ss.get("products", {}))
        if names:
            if ss.get("current") not in names:
                ss["current"] = names[-1]
            # "current" is plain state (pages set it when they add a product); the widget mirrors it
            ss["current_pick"] = ss["current"]
            st.selectbox("Current product", names, key="current_pick",
                         on_change=lambda: ss.update(current=ss["current_pick"]))
        # paths are for operators: a demo visitor sees the product picker first, the settings folded away
        adv = st.expander("Advanced: checkpoint, catalog, examples, device")
    with adv:
        st.selectbox("Checkpoint", options("ckpt_dir", False), key="ckpt_dir", format_func=label,
                     help="folders holding config.json + model.safetensors under the server's roots "
                          "(default: env SCALE_CHECKPOINT)")
        st.selectbox("Catalog embeddings (.npz)", options("catalog_path", True), key="catalog_path",
                     format_func=lambda p: label(p) or "the checkpoint's catalog.npz",
                     help="default: the checkpoint's catalog.npz (env SCALE_CATALOG)")
        st.selectbox("Catalog manifest (titles, thumbnails, examples)", options("manifest_path", True),
                     key="manifest_path", format_func=lambda p: label(p) or "generated examples",
                     help="files named *manifest* under the server's roots (env SCALE_MANIFEST)")
        st.radio("Device", ["auto", "cpu"], key="device", horizontal=True, help="auto = CUDA when present")
    ckpt = Path(chosen["ckpt_dir"])
    catalog = Path(chosen["catalog_path"]) if chosen["catalog_path"] else ckpt / "catalog.npz"
    manifest = Path(chosen["manifest_path"]) if chosen["manifest_path"] else None
    mine = my_catalog_choice(ckpt, rs)
    if mine is not None:
        return Settings(ckpt, mine.catalog_path, Path(ss["my_catalog"]), ss["device"], mine.folder)
    return Settings(ckpt, catalog, manifest, ss["device"])


def my_catalog_choice(ckpt: Path, rs: list[Path]):
    """The session's "Use my catalog" build (core.explore.my_catalog.MyCatalog) when it is finished and current
    for this checkpoint, else None; the sidebar says which catalog is in use and offers the way back."""
    from core.explore import my_catalog as mc

    ss = st.session_state
    if not ss.get("my_catalog"):
        return None
    try:
        man = rt.allowed(ss["my_catalog"], rs)
    except rt.PathRefused:
        log.warning("refused my_catalog=%r: outside the roots", ss["my_catalog"])
        ss.pop("my_catalog")
        st.error(rt.REFUSED)
        return None
    ss["my_catalog"] = str(man)  # the resolved path is what Settings carries
    done = mc.current(man, ckpt)
    with st.sidebar:
        if done is None:
            st.warning(f"My catalog `{label(man)}` is not embedded for checkpoint `{ckpt.name}` (or changed since), so "
                       "the catalog chosen under *Advanced* is used. Fix: run it again on **Use my catalog**.")
        else:
            st.info(f"**Catalog: my catalog** `{label(man)}`, {done.products:,} products.")
        st.button("Use the configured catalog again", key="my_catalog_off", on_click=lambda: ss.pop("my_catalog", None))
    return done


def explain(text: str) -> None:
    st.caption(f"**What am I looking at?** {text}")


# Widget choices that survive a page change. Streamlit drops a widget's state when a run does not draw it;
# writing the value back at the top of every page keeps it. Buttons and file uploaders cannot be written
# (their uploads live on as session products); choices that depend on the product carry its name in the key.
PERSIST_PREFIXES = ("up_title", "up_description", "up_use_soundtrack", "up_category", "mp_", "map_", "rt_", "ct_",
                    "tr_", "example_pick", "mc_manifest")
NOT_WRITABLE = ("up_submit", "ct_wide_run", "map_thumb")


def keep_choices() -> None:
    ss = st.session_state
    for k in list(ss.keys()):
        if isinstance(k, str) and k.startswith(PERSIST_PREFIXES) and not k.startswith(NOT_WRITABLE):
            ss[k] = ss[k]


PAGES_DIR = Path(__file__).resolve().parent / "pages"
ICONS = {"Upload": ":material/upload:", "Modality scores": ":material/grid_on:", "Masked": ":material/theater_comedy:",
         "Embedding": ":material/map:", "Modality contributions": ":material/balance:", "Retrieval": ":material/search:",
         "Training": ":material/monitoring:", "Catalog": ":material/fact_check:", "Use my": ":material/storefront:"}


def page_title(path: Path) -> str:
    """"3_Masked_prediction.py" -> "Masked prediction"."""
    stem = path.stem.split("_", 1)[1] if path.stem[:1].isdigit() and "_" in path.stem else path.stem
    return stem.replace("_", " ")


def app_pages(home: Callable[[], None]) -> list:
    """The app's navigation: Home (`home`, the default page) and then every script in pages/."""
    pages = [st.Page(home, title="Home", icon=":material/home:", default=True, url_path="home")]
    for f in sorted(PAGES_DIR.glob("*.py")):
        t = page_title(f)
        pages.append(st.Page(f"pages/{f.name}", title=t,
                             icon=next((v for k, v in ICONS.items() if t.startswith(k)), ":material/article:")))
    return pages


def _not_run() -> None:  # the Home entry sent by _through_router; a click on it runs app.py's own home
    raise RuntimeError("app.py's Home page runs through app.py")


def _through_router() -> None:
    """Until a session has run app.py, Streamlit serves a page URL opened directly with its pages/-folder
    router (sidebar "app", no icons). Sending app.py's navigation from the page turns that router off for the
    process, as app.py's st.navigation does, and gives the sidebar the app's entries. Then the page runs again
    at once: the widgets it drew under the old router carry other ids, so a first click on them would be lost.
    Only in a session's first run: that is the page load of a URL, before any widget event."""
    from streamlit.runtime.pages_manager import PagesManager

    first = PagesManager.uses_pages_directory and "scale_nav_sent" not in st.session_state
    st.session_state["scale_nav_sent"] = True
    if first:
        st.navigation(app_pages(_not_run))
        st.rerun()


def page(title: str, explanation: str, tab: str | None = None) -> Settings:
    """Every page's opening: browser-tab title (`tab`, default `title`), the sidebar, the heading and the
    "what am I looking at" line. Returns the sidebar's settings."""
    _through_router()
    st.set_page_config(page_title=f"{tab or title} · SCALE Explorer", layout="wide")
    keep_choices()
    s = sidebar()
    st.title(title)
    explain(explanation)
    return s


# ---------------------------------------------------------------- cached heavy objects
@st.cache_resource(show_spinner="Loading the model and the backbones (once per checkpoint and device)…")
def _explorer(ckpt: str, device: str, mtime: float):
    from core.explore.explorer import Explorer

    ex = Explorer.load(ckpt, device)
    try:
        ex.warm_up()  # the first upload then costs what every later one does
    except Exception:  # noqa: BLE001 - only a speed-up: the app works without it
        log.warning("warm-up skipped", exc_info=True)
    # The model, backbones and libraries live as long as the process: move them out of the cyclic
    # collector's view. Full collections scanning them cost 0.45-0.77 s in an upload (measured).
    gc.collect()
    gc.freeze()
    return ex


def checkpoint_problem(ckpt: Path) -> str | None:
    """Only asked of a chosen checkpoint (under a root), so saying what exists there reveals nothing else."""
    if not ckpt.is_dir():
        return f"{label(ckpt)}: checkpoint folder not found."
    missing = [f for f in ("config.json", "model.safetensors") if not (ckpt / f).is_file()]
    if missing:
        return f"{label(ckpt)}: checkpoint folder lacks {', '.join(missing)}."
    return None


def how_to_make_checkpoint() -> str:
    return ("Fix: train one and evaluate it, for example\n\n"
            "```\npython -m core.train --manifest ../shared/data/shop3k/manifest.jsonl --out runs/shop3k-small\n"
            "python -m core.eval ...   # writes metrics.json and catalog.npz beside the model\n```\n"
            "then copy the run's model folder to `checkpoints/scale-shop3k-small/` and pick it in the sidebar's "
            "*Checkpoint* list (the server's administrator can add folders with `SCALE_ROOTS`).")


def require_explorer(s: Settings):
    """The cached Explorer, or an st.error naming the folder and the fix (then the page stops)."""
    problem = checkpoint_problem(s.ckpt_dir)
    if problem:
        st.error(problem + " " + how_to_make_checkpoint())
        st.stop()
    try:
        return _explorer(str(s.ckpt_dir.resolve()), s.device, _mtime(s.ckpt_dir / "model.safetensors"))
    except (ScaleError, OSError, ValueError, KeyError, RuntimeError) as e:
        log.exception("checkpoint %s could not be loaded", s.ckpt_dir)  # the traceback stays on the server
        st.error(f"{label(s.ckpt_dir)}: the checkpoint could not be loaded ({public(str(e))}). Fix: pick a "
                 "checkpoint written by core.model.checkpoint.save_checkpoint for this code version.")
        st.stop()


@st.cache_resource(show_spinner="Writing the generated example products…")
def generated_examples() -> str:
    """Manifest of procedural example products (core.data.synth), written once per server."""
    from core.data.synth import make_catalog

    folder = Path(tempfile.gettempdir()) / "scale-explorer-examples"
    manifest = folder / "manifest.jsonl"
    if not manifest.is_file():
        make_catalog(folder, n=12, video_seconds=3.0, audio_seconds=3.0)
    return str(manifest)


def examples_manifest(s: Settings) -> tuple[Path, bool]:
    """(manifest, generated): the sidebar's manifest when it exists, else the generated examples."""
    if s.manifest_path and s.manifest_path.is_file():
        return s.manifest_path, False
    return Path(generated_examples()), True


@st.cache_data(show_spinner=False)
def read_products(manifest: str, mtime: float) -> list:
    from core.data.records import read_manifest

    return read_manifest(manifest, check=False)


def products_of(s: Settings) -> tuple[list, bool]:
    path, generated = examples_manifest(s)
    return read_products(str(path), _mtime(path)), generated


@st.cache_data(show_spinner="Embedding the example products into a catalog…", max_entries=4)
def _built_catalog(ckpt: str, device: str, mtime: float, manifest: str, limit: int) -> Catalog:
    """Used when the checkpoint has no catalog.npz: embed the first `limit` example products."""
    ex = _explorer(ckpt, device, mtime)
    from core.model.catalog import embed_products

    prods = read_products(manifest, _mtime(Path(manifest)))[:limit]
    items = []
    for p in prods:
        f = ex.features(ex.decode(p))
        f.update(category=p.category or "", source=p.source or "", split=p.split or "")
        items.append(f)
    return embed_products(ex.model, items)


@st.cache_data(show_spinner="Loading catalog embeddings…", max_entries=4)
def _catalog(path: str, mtime: float, manifest: str | None, manifest_mtime: float) -> Catalog:
    cat = Catalog.load(path)
    if manifest:
        cat.attach_manifest(read_products(manifest, manifest_mtime))
    return cat


def require_catalog(s: Settings, ex) -> tuple[Catalog, bool]:
    """(catalog, built_from_examples). Missing catalog.npz: embed the (first 64) example products instead."""
    man, generated = examples_manifest(s)
    if s.catalog_path.is_file():
        try:
            return _catalog(str(s.catalog_path), _mtime(s.catalog_path), str(man), _mtime(man)), False
        except ScaleError as e:
            log.exception("catalog %s could not be loaded", s.catalog_path)
            st.error(public(str(e)))
            st.stop()
    st.info(f"{label(s.catalog_path)} does not exist, so the catalog here is the first 64 "
            f"{'generated example' if generated else 'manifest'} products embedded now "
            "(the evaluator writes catalog.npz for the whole catalog).")
    cat = _built_catalog(str(s.ckpt_dir.resolve()), s.device, _mtime(s.ckpt_dir / "model.safetensors"), str(man), 64)
    cat.attach_manifest(read_products(str(man), _mtime(man)))
    return cat, True


@st.cache_resource(show_spinner=False, max_entries=8)
def projection(catalog_key: str, kind: str, method: str, dim: int, _X: np.ndarray):
    """Fitted once per (catalog, embedding, method, dim); kept as a resource because uploads are
    placed on it with .transform (UMAP's fitted model is an object, not data)."""
    from core.explore.projection import fit_projection

    return fit_projection(_X, method=method, dim=dim, seed=0)


def catalog_key(s: Settings, cat: Catalog) -> str:
    return f"{s.catalog_path}:{_mtime(s.catalog_path)}:{len(cat)}:{s.ckpt_dir}:{_mtime(s.ckpt_dir / 'model.safetensors')}"


# ---------------------------------------------------------------- session products
def products() -> dict[str, dict]:
    return st.session_state.setdefault("products", {})


def upload_folder() -> Path:
    """This browser session's upload folder. The UploadSpace lives in session state, so the folder is
    removed when Streamlit drops the session (or at the latest when the server process exits)."""
    ss = st.session_state
    space = ss.get("upload_space")
    if space is None or not space.alive:
        space = ss["upload_space"] = UploadSpace()
    return space.path


def _media_name(p: str | None) -> str | None:
    return Path(p).name if p else None


def session_record(s: Settings, examples: Path, generated: bool, prods: dict[str, dict]) -> dict:
    """The home page's session download: settings as root-relative labels and products' media by file name,
    so it carries no server path."""
    out = {}
    for n, e in prods.items():
        d = e["product"].to_json()
        d.update(images=[_media_name(p) for p in d.get("images") or []], video=_media_name(d.get("video")),
                 audio=_media_name(d.get("audio")))
        out[n] = d
    return {"checkpoint": label(s.ckpt_dir), "catalog": label(s.catalog_path),
            "examples": "generated examples" if generated else label(examples), "generated_examples": generated,
            "products": out}


def train_log(s: Settings):
    """The chosen checkpoint's training log (core.explore.training_log.read_train_log), only when it lies under a root
    (the reader also looks one and two folders up, for a run's checkpoint)."""
    path = find_train_log(s.ckpt_dir)
    if path is None or not rt.is_allowed(path, server_roots()):
        return None
    return read_train_log(path)


def add_product(ex, name: str, product, decoded, errors: dict, generated: bool = False,
                features: dict | None = None, notes: "Mapping | None" = None) -> dict | None:
    """Encode a decoded product (unless `features` are given) and make it current. Returns the entry, or
    None if nothing was usable."""
    if not any(decoded.present().values()):
        return None
    entry = {"product": product, "decoded": decoded, "features": features if features is not None else ex.features(decoded),
             "errors": dict(errors), "notes": dict(notes or {}), "generated": generated}
    prods = products()
    base, n = name, 2
    while name in prods and prods[name]["product"].id != product.id:
        name, n = f"{base} ({n})", n + 1
    prods[name] = entry
    st.session_state["current"] = name
    return entry


def load_catalog_product(ex, s: Settings, cat: Catalog | None, p, generated: bool = False) -> dict | None:
    """Load a manifest product into the session: decoded from its files (the pages show the media), features
    from the feature cache when it holds the product (no backbone pass), else encoded now."""
    decoded = ex.decode(p)
    feats = None
    fc = feature_source(s, cat) if cat is not None else None
    if fc is not None and p.id in fc:
        try:
            feats = dict(fc[p.id])
            feats["id"] = p.id
        except (ScaleError, KeyError, OSError):
            log.warning("feature cache entry %s not usable; encoding instead", p.id, exc_info=True)
            feats = None
    return add_product(ex, f"{'[generated] ' if generated else ''}{p.title or p.id}", p, decoded,
                       decoded.errors, generated, features=feats, notes=getattr(decoded, "notes", None))


def catalog_match(ex, s: Settings, cat: Catalog, entry: dict):
    """core.explore.explorer.match_catalog of a session product, kept in its entry per catalog: duplicate flag and
    inferred category. An upload without a category takes the inferred one (the user can change it)."""
    from core.explore.explorer import match_catalog

    memo = entry.setdefault("match", {})
    key = catalog_key(s, cat)
    if key not in memo:
        memo[key] = match_catalog(analysis(ex, entry).fused, cat, entry["product"].id)
        m = memo[key]
        if not entry["product"].category and m.category and "category_source" not in entry:
            entry["product"] = replace(entry["product"], category=m.category)
            entry["category_source"] = "inferred"
    return memo[key]


def excluded(ex, s: Settings, cat: Catalog, entry: dict) -> np.ndarray:
    """(N,) bool catalog rows that are the product itself (its id or its duplicate)."""
    return catalog_match(ex, s, cat, entry).exclude(cat.ids, entry["product"].id)


def analysis(ex, entry: dict, missing: str = "mask"):
    """`ex.analyze` of a session product, kept in its entry: every page and rerun reuses one forward pass."""
    memo = entry.setdefault("analysis", {})
    key = (id(ex.model), missing)
    if key not in memo:
        memo[key] = ex.analyze(entry["features"], missing=missing)
    return memo[key]


def current(required: bool = True) -> tuple[str, dict] | tuple[None, None]:
    prods = products()
    name = st.session_state.get("current")
    if name in prods:
        return name, prods[name]
    if required:
        st.info("No product yet. Fix: pick one in the **Home** gallery (one click), or upload files on "
                "**Upload and inspect**.")
        st.page_link("pages/1_Upload_and_inspect.py", label="Go to Upload and inspect", icon=":material/upload:")
        st.stop()
    return None, None


def present_badges(present: dict[str, bool] | list[bool]) -> str:
    if not isinstance(present, dict):
        present = dict(zip(MODALITIES, present))
    return " ".join(f":green-badge[{m}]" if present[m] else f":gray-badge[~~{m}~~ absent]" for m in MODALITIES)


# ---------------------------------------------------------------- figures
def matrix_figure(M: np.ndarray, title: str, zmin: float = -1.0, zmax: float = 1.0, labels=MODALITIES,
                  colorscale: str = "RdBu", fmt: str = ".2f") -> go.Figure:
    """5x5 heatmap; NaN cells (absent modalities) are grey and say 'absent', never 0."""
    M = np.asarray(M, dtype=float)
    if np.isfinite(M).any() and np.nanmin(M) < zmin:  # S' can be negative: widen to a diverging scale
        zmin, colorscale = -zmax, "RdBu"
    text = [["absent" if not np.isfinite(v) else format(v, fmt) for v in row] for row in M]
    fig = go.Figure(go.Heatmap(z=np.where(np.isfinite(M), M, None), x=list(labels), y=list(labels), zmin=zmin, zmax=zmax,
                               colorscale=colorscale, text=text, texttemplate="%{text}", hoverongaps=True,
                               hovertemplate="%{y} → %{x}: %{text}<extra></extra>"))
    fig.update_layout(title=title, plot_bgcolor=GREY, height=380, margin=dict(l=10, r=10, t=50, b=10),
                      yaxis=dict(autorange="reversed"))
    fig.update_xaxes(showgrid=False)
    fig.update_yaxes(showgrid=False)
    return fig


def square_crop(img: np.ndarray) -> np.ndarray:
    """The center square the image backbone sees (it resizes the short side, then center-crops)."""
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return img[top: top + s, left: left + s]


def region_grid_figure(img: np.ndarray, values: np.ndarray | None = None, masked: np.ndarray | None = None,
                       grid: int = 7, title: str = "", zmax: float | None = None) -> go.Figure:
    """The image as the backbone sees it with its grid x grid regions; `values` (grid*grid,) overlays a
    heatmap (reconstruction error), `masked` outlines the masked regions."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(square_crop(img)).resize((224, 224)).save(buf, format="PNG")
    cell = 224 / grid
    # the picture goes in as a PNG data URI: a raw pixel array makes the figure JSON ~10x larger,
    # and Streamlit hashes that JSON on every rerun
    fig = go.Figure(go.Image(source="data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(),
                             hoverinfo="skip"))
    if values is not None:
        v = np.asarray(values, dtype=float).reshape(grid, grid)
        if masked is not None:
            v = np.where(np.asarray(masked).reshape(grid, grid), v, np.nan)
        fig.add_trace(go.Heatmap(z=v, x=(np.arange(grid) + 0.5) * cell, y=(np.arange(grid) + 0.5) * cell, opacity=0.55,
                                 zmin=0 if zmax else None, zmax=zmax,
                                 colorscale="Inferno", colorbar=dict(title="MSE"), hoverongaps=False,
                                 hovertemplate="region row %{y:.0f} col %{x:.0f}<br>MSE %{z:.3f}<extra></extra>"))
    # all grid lines as one trace (None breaks the line): one object instead of 16 validated shapes
    xs, ys = [], []
    for k in range(grid + 1):
        xs += [k * cell, k * cell, None, 0, 224, None]
        ys += [0, 224, None, k * cell, k * cell, None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="white", width=1), hoverinfo="skip",
                             showlegend=False))
    fig.update_layout(title=title, height=380, margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    fig.update_xaxes(visible=False, range=[0, 224])
    fig.update_yaxes(visible=False, range=[224, 0], scaleanchor="x")
    return fig


def spectrogram_figure(mel: np.ndarray, patch_frames: int, errors: np.ndarray | None = None,
                       masked: np.ndarray | None = None, title: str = "Log-mel spectrogram",
                       emax: float | None = None) -> go.Figure:
    """Mel spectrogram (n_mels, T); masked time patches shaded, coloured by their reconstruction error."""
    fig = go.Figure(go.Heatmap(z=mel, colorscale="Viridis", colorbar=dict(title="log mel"),
                               hovertemplate="frame %{x}<br>mel bin %{y}<br>%{z:.2f}<extra></extra>"))
    if errors is not None and masked is not None and masked.any():
        emax = emax or float(np.max(errors[masked])) or 1.0  # a fixed scale when given, so runs compare
        for i in np.flatnonzero(masked):
            a = 0.15 + 0.6 * min(float(errors[i]) / emax, 1.0)
            fig.add_shape(type="rect", x0=i * patch_frames - 0.5, x1=(i + 1) * patch_frames - 0.5, y0=-0.5,
                          y1=mel.shape[0] - 0.5, fillcolor=f"rgba(255,60,60,{a:.2f})", line=dict(width=0))
            fig.add_annotation(x=(i + 0.5) * patch_frames, y=mel.shape[0] + 2, text=f"{errors[i]:.2f}",
                               showarrow=False, font=dict(size=9))
    fig.update_layout(title=title, height=300, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis_title="mel frame", yaxis_title="mel bin")
    return fig


def waveform_figure(wav: np.ndarray, sr: int = 16_000) -> go.Figure:
    step = max(1, len(wav) // 4000)  # a few thousand points draw fast and look the same
    t = np.arange(0, len(wav), step) / sr
    fig = go.Figure(go.Scatter(x=t, y=wav[::step], mode="lines", line=dict(width=1)))
    fig.update_layout(title="Waveform (16 kHz mono)", height=220, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis_title="seconds", yaxis_title="amplitude")
    return fig


# ---------------------------------------------------------------- downloads
@st.cache_data(show_spinner=False, max_entries=32)
def _png(fig_json: str) -> bytes | None:
    """PNG via kaleido (needs a Chrome/Chromium on this machine); None when that does not work."""
    try:
        import plotly.io as pio

        return pio.to_image(pio.from_json(fig_json), format="png", scale=2)
    except Exception:  # noqa: BLE001 - any kaleido/browser failure means "no PNG", shown as a caption
        log.warning("PNG export failed", exc_info=True)
        return None


def downloads(name: str, data: "pd.DataFrame | dict | list | None" = None, fig: go.Figure | None = None,
              key: str | None = None) -> None:
    """Download buttons: the page's data (CSV for tables, JSON otherwise) and the figure (HTML; PNG on request)."""
    key = key or name
    cols = st.columns(3)
    # callables: the files are built only when a button is clicked, so a rerun never pays for them
    if data is not None:
        if isinstance(data, pd.DataFrame):
            cols[0].download_button("Data (CSV)", lambda: data.to_csv(index=True).encode(), f"{name}.csv", "text/csv",
                                    key=f"dl-csv-{key}")
        else:
            cols[0].download_button("Data (JSON)", lambda: json.dumps(data, indent=2, default=_jsonable).encode(),
                                    f"{name}.json", "application/json", key=f"dl-json-{key}")
    if fig is not None:
        cols[1].download_button("Figure (HTML)", lambda: fig.to_html(include_plotlyjs="cdn").encode(), f"{name}.html",
                                "text/html", key=f"dl-html-{key}")
        if cols[2].toggle("PNG", key=f"png-{key}", help="renders the figure with kaleido (headless Chromium)"):
            png = _png(fig.to_json())
            if png:
                cols[2].download_button("Figure (PNG)", png, f"{name}.png", "image/png", key=f"dl-png-{key}")
            else:
                cols[2].caption("PNG export needs kaleido with a Chrome/Chromium, which is not working here: HTML only.")


def _jsonable(o: Any):
    if isinstance(o, np.ndarray):
        return np.where(np.isfinite(o), o, None).tolist() if o.dtype.kind == "f" else o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    return str(o)


def matrix_json(M: np.ndarray) -> list:
    """5x5 as nested lists with None for absent (JSON has no NaN)."""
    return [[None if not np.isfinite(v) else round(float(v), 6) for v in row] for row in np.asarray(M, dtype=float)]


# ---------------------------------------------------------------- catalog-wide contributions
def feature_source(s: Settings, cat: Catalog):
    """A FeatureCache holding the catalog's products (env SCALE_FEATURES, else cache/<manifest folder>), or None."""
    from core.data.cache import default_cache_dir
    from core.data.features import FeatureCache

    cands = [str(s.my_catalog / "features") if s.my_catalog else "", os.environ.get("SCALE_FEATURES", "")]
    if s.manifest_path:
        cands.append(str(default_cache_dir(s.manifest_path)))
    for c in cands:
        if c and (Path(c) / "index.json").is_file():
            try:
                fc = FeatureCache(c)
                if len(cat) and str(cat.ids[0]) in fc:
                    return fc
            except (ScaleError, OSError, ValueError):
                log.warning("feature cache %s not usable", c, exc_info=True)
                continue
    return None


class _LazyFeatures(Mapping):
    """id -> features, read only when asked: the catalog-wide view samples a few products per category."""

    def __init__(self, ids: list[str], fetch) -> None:
        self._ids, self._fetch = ids, fetch

    def __getitem__(self, pid: str):
        return self._fetch(pid)

    def __iter__(self):
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


# no progress bar inside: st.cache_data replays the elements a cached function touched, and a bar from an
# earlier run no longer exists (CacheReplayClosureError on the next rerun)
@st.cache_data(show_spinner="Computing catalog-wide contributions (once per catalog and choice)…", max_entries=8,
               persist="disk")  # survives a server restart: it is slow
def catalog_wide(_ex, _cat: Catalog, key: str, per_category: int, max_categories: int, _s: Settings) -> pd.DataFrame:
    """Mean Shapley (neighbour similarity) per modality per category; features from the cache when there
    is one, else decoded and encoded from the manifest. Either way only the sampled products are read."""
    from core.explore.contributions import catalog_contributions

    cats = {str(i): str(c) for i, c in zip(_cat.ids, _cat.categories) if c}
    fc = feature_source(_s, _cat)
    if fc is not None:
        ids, fetch = [pid for pid in cats if pid in fc], fc.__getitem__
    else:
        by_id = {p.id: p for p in products_of(_s)[0] if p.id in cats}
        ids, fetch = list(by_id), lambda pid: _ex.features(_ex.decode(by_id[pid]))
    return catalog_contributions(_ex.model, _LazyFeatures(ids, fetch), {k: cats[k] for k in ids}, _cat,
                                 per_category=per_category, max_categories=max_categories)


# ---------------------------------------------------------------- catalog check (core.explore.catalog_check)
@st.cache_data(show_spinner="Scoring the catalog's modality pairs…", max_entries=4)
def catalog_scores(key: str, _cat: Catalog, centred: bool = True):
    """Per-pair S, percentiles and z of every catalog product (numpy on the stored pooled features, no
    model forward), once per catalog: `key` is catalog_key(s, cat); `centred`: core.explore.catalog_check.s_centred."""
    from core.explore.catalog_check import catalog_scores as compute

    return compute(_cat, centred)


# ---------------------------------------------------------------- masked prediction references
@st.cache_data(show_spinner="Counting the catalog's words (once)…", max_entries=4)
def word_baselines(_ex, manifest: str, mtime: float, ids: tuple[str, ...]) -> dict[str, str]:
    """Most frequent content word piece of the catalog's texts and of its table values (the baselines)."""
    from core.explore.explorer import frequency_baseline

    keep = set(ids)
    prods = [p for p in read_products(manifest, mtime) if p.id in keep]
    values = [" ".join(str(x) for x in (v if isinstance(v, list) else [v])) for p in prods for v in p.attributes.values()]
    return {"text": frequency_baseline(_ex.tokenizer, [p.text for p in prods]),
            "table": frequency_baseline(_ex.tokenizer, values)}


@st.cache_data(show_spinner="Measuring the catalog's typical reconstruction error (once per catalog)…",
               max_entries=4, persist="disk")
def reference_errors(_ex, _s: Settings, _cat: Catalog, key: str, n: int = 8) -> dict[str, float]:
    """Median masked-item MSE per modality over up to `n` catalog products (features from the cache, else
    decoded; decoding is slow, so then only 4): the fixed scale and reference line of the charts."""
    from core.explore.explorer import reference_errors as ref
    from core.explore.gallery import choose_gallery

    fc = feature_source(_s, _cat)
    if fc is not None:
        ids = [str(i) for i in _cat.ids if str(i) in fc][:n]
        items = [dict(fc[i], id=i) for i in ids]
    else:
        picks = choose_gallery(products_of(_s)[0], _cat.ids, 4)
        items = [_ex.features(_ex.decode(p)) for p in picks]
    return ref(_ex, items)


# ---------------------------------------------------------------- "Use my catalog" and ANN search
def manifests() -> list[str]:
    """Manifests under the roots (files named *manifest*: what `python -m core.data.records import` writes
    when told --out .../manifest.jsonl, and every project manifest)."""
    return _found(tuple(str(r) for r in server_roots()))["manifest_path"]


def exact_below() -> int:
    """Catalogs of at least this many products are searched through an ANN index (env SCALE_EXACT_BELOW,
    default core.explore.ann.EXACT_BELOW)."""
    from core.explore.ann import EXACT_BELOW

    try:
        return max(1, int(os.environ.get("SCALE_EXACT_BELOW", EXACT_BELOW)))
    except ValueError:
        log.warning("SCALE_EXACT_BELOW=%r is not a number: %d used", os.environ.get("SCALE_EXACT_BELOW"), EXACT_BELOW)
        return EXACT_BELOW


_PHASES = {"features": "Extracting features (kept on disk; an interrupted run resumes)", "embed": "Embedding",
           "index": "Building the ANN index", "done": "Already embedded"}


def build_my_catalog(s: Settings, ex, manifest: str, bar):
    """core.explore.my_catalog.build_my_catalog of a manifest under the roots with the session's model, reporting
    into the st.progress `bar`. PathRefused for anything outside the roots."""
    from core.explore import my_catalog as mc

    man = rt.allowed(manifest, server_roots())

    def progress(done: int, total: int, phase: str) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{_PHASES.get(phase, phase)}: {done:,} / {total:,}")

    return mc.build_my_catalog(man, s.ckpt_dir, ex.model, progress=progress, device=ex.device.type,
                               backbones=ex.featurizer.cfg,
                               exact_below=exact_below())


@st.cache_resource(show_spinner="Building the catalog's ANN index (once per catalog and gallery)…", max_entries=4)
def _gallery_index(key: str, gallery: str, saved: str, limit: int, _X: np.ndarray, _ids: np.ndarray):
    """Read-only after build (core.explore.ann), so sessions share it safely."""
    from core.explore.ann import gallery_index as build

    return build(_X, _ids, exact_below=limit, saved=saved or None)


def gallery_index(s: Settings, cat: Catalog, gallery: str, G: np.ndarray):
    """The ANN index of the catalog's `gallery` embedding, or None where exact search is used (below
    exact_below() products). My catalog's fused index is the one its build saved."""
    if len(G) < exact_below():
        return None
    saved = str(s.my_catalog / "ann") if s.my_catalog is not None and gallery == "fused" else ""
    return _gallery_index(catalog_key(s, cat), gallery, saved, exact_below(), G, cat.ids)
