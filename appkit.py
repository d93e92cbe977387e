"""Shared pieces of the Streamlit app (sidebar, caches, session state, figures, downloads).

Session state keys (the only state that crosses pages):
    products   dict[str, dict]  name -> {"product": Product, "decoded": Decoded, "features": dict,
                                "errors": dict[str, str], "generated": bool}
    current    str | None       name of the product the pages show (the sidebar's `current_pick` mirrors it)
    compare    str | None       a second product for side-by-side views (Modality scores)
    ckpt_dir, catalog_path, manifest_path, device   sidebar widgets (settings)

Heavy objects (model + backbones, fitted projections, the examples folder) are in st.cache_resource;
derived data (catalog embeddings, training logs, catalog-wide contributions) in st.cache_data. Each
key includes the files' modification times, so a retrained checkpoint is picked up.
"""
from __future__ import annotations

import base64
import gc
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.catalog import Catalog
from core.errors import ScaleError
from core.modalities import MODALITIES

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "scale-shop3k-small"
SHOP3K_MANIFEST = ROOT.parent / "shared" / "data" / "shop3k" / "manifest.jsonl"
GREY = "#d9d9d9"


# ---------------------------------------------------------------- settings
@dataclass
class Settings:
    ckpt_dir: Path
    catalog_path: Path
    manifest_path: Path | None  # None: the generated examples
    device: str


def _mtime(p: Path | None) -> float:
    try:
        return p.stat().st_mtime if p else 0.0
    except OSError:
        return 0.0


def sidebar() -> Settings:
    """Checkpoint, catalog, manifest and device pickers (defaults from SCALE_CHECKPOINT / SCALE_CATALOG /
    SCALE_MANIFEST, else the shipped checkpoint, its catalog.npz and shop3k when it is beside the repo)."""
    ss = st.session_state
    ss.setdefault("ckpt_dir", os.environ.get("SCALE_CHECKPOINT", str(DEFAULT_CHECKPOINT)))
    ss.setdefault("catalog_path", os.environ.get("SCALE_CATALOG", ""))
    ss.setdefault("manifest_path", os.environ.get("SCALE_MANIFEST", str(SHOP3K_MANIFEST) if SHOP3K_MANIFEST.is_file() else ""))
    ss.setdefault("device", "auto")
    for k in ("ckpt_dir", "catalog_path", "manifest_path", "device"):
        if k in ss:  # re-assigning keeps a widget's value when another page renders it (Streamlit drops it otherwise)
            ss[k] = ss[k]
    with st.sidebar:
        st.text_input("Checkpoint folder", key="ckpt_dir", help="config.json + model.safetensors (env SCALE_CHECKPOINT)")
        st.text_input("Catalog embeddings (.npz)", key="catalog_path", placeholder="<checkpoint>/catalog.npz",
                      help="empty: the checkpoint's catalog.npz (env SCALE_CATALOG)")
        st.text_input("Catalog manifest (titles, thumbnails, examples)", key="manifest_path",
                      placeholder="generated examples", help="empty: generated example products (env SCALE_MANIFEST)")
        st.radio("Device", ["auto", "cpu"], key="device", horizontal=True, help="auto = CUDA when present")
        names = list(ss.get("products", {}))
        if names:
            if ss.get("current") not in names:
                ss["current"] = names[-1]
            # "current" is plain state (pages set it when they add a product); the widget mirrors it
            ss["current_pick"] = ss["current"]
            st.selectbox("Current product", names, key="current_pick",
                         on_change=lambda: ss.update(current=ss["current_pick"]))
    ckpt = Path(ss["ckpt_dir"]).expanduser()
    catalog = Path(ss["catalog_path"]).expanduser() if ss["catalog_path"] else ckpt / "catalog.npz"
    manifest = Path(ss["manifest_path"]).expanduser() if ss["manifest_path"] else None
    return Settings(ckpt, catalog, manifest, ss["device"])


def explain(text: str) -> None:
    st.caption(f"**What am I looking at?** {text}")


def page(title: str, explanation: str, tab: str | None = None) -> Settings:
    """Every page's opening: browser-tab title (`tab`, default `title`), the sidebar, the heading and the
    "what am I looking at" line. Returns the sidebar's settings."""
    st.set_page_config(page_title=f"{tab or title} · SCALE Explorer", layout="wide")
    s = sidebar()
    st.title(title)
    explain(explanation)
    return s


# ---------------------------------------------------------------- cached heavy objects
@st.cache_resource(show_spinner="Loading the model and the backbones (once per checkpoint and device)…")
def _explorer(ckpt: str, device: str, mtime: float):
    from core.explorer import Explorer

    ex = Explorer.load(ckpt, device)
    try:
        ex.warm_up()  # the first upload then costs what every later one does
    except Exception as e:  # noqa: BLE001 - only a speed-up: the app works without it
        import logging

        logging.getLogger(__name__).warning("warm-up skipped: %s", e)
    # The model, backbones and libraries live as long as the process: move them out of the cyclic
    # collector's view. Full collections scanning them cost 0.45-0.77 s in an upload (measured).
    gc.collect()
    gc.freeze()
    return ex


def checkpoint_problem(ckpt: Path) -> str | None:
    if not ckpt.is_dir():
        return f"{ckpt}: checkpoint folder not found."
    missing = [f for f in ("config.json", "model.safetensors") if not (ckpt / f).is_file()]
    if missing:
        return f"{ckpt}: checkpoint folder lacks {', '.join(missing)}."
    return None


def how_to_make_checkpoint() -> str:
    return ("Fix: train one and evaluate it, for example\n\n"
            "```\npython -m core.train --manifest ../shared/data/shop3k/manifest.jsonl --out runs/shop3k-small\n"
            "python -m core.evaluate ...   # writes metrics.json and catalog.npz beside the model\n```\n"
            "then copy the run's model folder to `checkpoints/scale-shop3k-small/`, or set the sidebar's "
            "*Checkpoint folder* (env `SCALE_CHECKPOINT`) to any folder holding `config.json` + `model.safetensors`.")


def require_explorer(s: Settings):
    """The cached Explorer, or an st.error naming the folder and the fix (then the page stops)."""
    problem = checkpoint_problem(s.ckpt_dir)
    if problem:
        st.error(problem + " " + how_to_make_checkpoint())
        st.stop()
    try:
        return _explorer(str(s.ckpt_dir.resolve()), s.device, _mtime(s.ckpt_dir / "model.safetensors"))
    except (ScaleError, OSError, ValueError, KeyError, RuntimeError) as e:
        st.error(f"{s.ckpt_dir}: the checkpoint could not be loaded ({e}). Fix: point the sidebar at a "
                 "checkpoint written by core.checkpoint.save_checkpoint for this code version.")
        st.stop()


@st.cache_resource(show_spinner="Writing the generated example products…")
def generated_examples() -> str:
    """Manifest of procedural example products (core.synth), written once per server."""
    from core.synth import make_catalog

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
    from core.records import read_manifest

    return read_manifest(manifest, check=False)


def products_of(s: Settings) -> tuple[list, bool]:
    path, generated = examples_manifest(s)
    return read_products(str(path), _mtime(path)), generated


@st.cache_data(show_spinner="Embedding the example products into a catalog…", max_entries=4)
def _built_catalog(ckpt: str, device: str, mtime: float, manifest: str, limit: int) -> Catalog:
    """Used when the checkpoint has no catalog.npz: embed the first `limit` example products."""
    ex = _explorer(ckpt, device, mtime)
    from core.catalog import embed_products

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
            st.error(str(e))
            st.stop()
    st.info(f"{s.catalog_path} does not exist, so the catalog here is the first 64 "
            f"{'generated example' if generated else 'manifest'} products embedded now "
            "(the evaluator writes catalog.npz for the whole catalog).")
    cat = _built_catalog(str(s.ckpt_dir.resolve()), s.device, _mtime(s.ckpt_dir / "model.safetensors"), str(man), 64)
    cat.attach_manifest(read_products(str(man), _mtime(man)))
    return cat, True


@st.cache_resource(show_spinner=False, max_entries=8)
def projection(catalog_key: str, kind: str, method: str, dim: int, _X: np.ndarray):
    """Fitted once per (catalog, embedding, method, dim); kept as a resource because uploads are
    placed on it with .transform (UMAP's fitted model is an object, not data)."""
    from core.projection import fit_projection

    return fit_projection(_X, method=method, dim=dim, seed=0)


def catalog_key(s: Settings, cat: Catalog) -> str:
    return f"{s.catalog_path}:{_mtime(s.catalog_path)}:{len(cat)}:{s.ckpt_dir}:{_mtime(s.ckpt_dir / 'model.safetensors')}"


# ---------------------------------------------------------------- session products
def products() -> dict[str, dict]:
    return st.session_state.setdefault("products", {})


def add_product(ex, name: str, product, decoded, errors: dict, generated: bool = False) -> dict | None:
    """Encode a decoded product and make it current. Returns the entry, or None if nothing was usable."""
    if not any(decoded.present().values()):
        return None
    entry = {"product": product, "decoded": decoded, "features": ex.features(decoded), "errors": dict(errors),
             "generated": generated}
    prods = products()
    base, n = name, 2
    while name in prods and prods[name]["product"].id != product.id:
        name, n = f"{base} ({n})", n + 1
    prods[name] = entry
    st.session_state["current"] = name
    return entry


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
        st.info("No product yet. Fix: open **Upload and inspect** and upload files or load an example product.")
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
                       grid: int = 7, title: str = "") -> go.Figure:
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
                       masked: np.ndarray | None = None, title: str = "Log-mel spectrogram") -> go.Figure:
    """Mel spectrogram (n_mels, T); masked time patches shaded, coloured by their reconstruction error."""
    fig = go.Figure(go.Heatmap(z=mel, colorscale="Viridis", colorbar=dict(title="log mel"),
                               hovertemplate="frame %{x}<br>mel bin %{y}<br>%{z:.2f}<extra></extra>"))
    if errors is not None and masked is not None and masked.any():
        emax = float(np.max(errors[masked])) or 1.0
        for i in np.flatnonzero(masked):
            a = 0.15 + 0.6 * float(errors[i]) / emax
            fig.add_shape(type="rect", x0=i * patch_frames - 0.5, x1=(i + 1) * patch_frames - 0.5, y0=-0.5,
                          y1=mel.shape[0] - 0.5, fillcolor=f"rgba(255,60,60,{a:.2f})", line=dict(width=0))
            fig.add_annotation(x=(i + 0.5) * patch_frames, y=mel.shape[0] + 2, text=f"{errors[i]:.2f}",
                               showarrow=False, font=dict(size=9))
    fig.update_layout(title=title, height=300, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis_title="mel frame (hop 256 @ 16 kHz)", yaxis_title="mel bin")
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
    from core.features import FeatureCache

    cands = [os.environ.get("SCALE_FEATURES", "")]
    if s.manifest_path:
        cands.append(str(ROOT / "cache" / s.manifest_path.parent.name))
    for c in cands:
        if c and (Path(c) / "index.json").is_file():
            try:
                fc = FeatureCache(c)
                if len(cat) and str(cat.ids[0]) in fc:
                    return fc
            except (ScaleError, OSError, ValueError):
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


@st.cache_data(show_spinner=False, max_entries=8)
def catalog_wide(_ex, _cat: Catalog, key: str, per_category: int, max_categories: int, _s: Settings,
                 _progress=None) -> pd.DataFrame:
    """Mean Shapley (neighbour similarity) per modality per category; features from the cache when there
    is one, else decoded and encoded from the manifest. Either way only the sampled products are read."""
    from core.contributions import catalog_contributions

    cats = {str(i): str(c) for i, c in zip(_cat.ids, _cat.categories) if c}
    fc = feature_source(_s, _cat)
    if fc is not None:
        ids, fetch = [pid for pid in cats if pid in fc], fc.__getitem__
    else:
        by_id = {p.id: p for p in products_of(_s)[0] if p.id in cats}
        ids, fetch = list(by_id), lambda pid: _ex.features(_ex.decode(by_id[pid]))
    say = _progress or (lambda frac, text: None)
    return catalog_contributions(_ex.model, _LazyFeatures(ids, fetch), {k: cats[k] for k in ids}, _cat,
                                 per_category=per_category, max_categories=max_categories,
                                 progress=lambda i, n: say(i / n, f"Shapley values: {i}/{n} products"))
