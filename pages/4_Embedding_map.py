"""Embedding map of the catalog (UMAP or PCA), session products placed on it without refitting."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: pages import appkit and core

import numpy as np
import pandas as pd
import plotly.colors as pc
import plotly.graph_objects as go
import streamlit as st

import appkit as ak
from core.eval.metrics import l2n
from core.modalities import MODALITIES
from core.explore.ann import describe, search_gallery

s = ak.page("Embedding map",
            "Each dot is a catalog product, placed by a 2-D/3-D projection of its embedding (fused, or one modality's "
            "pooled feature). Products of one category should cluster. Your products (one marker shape each, the current one gold) are placed on the "
            "fitted map with .transform, so the map never moves. Hover shows the title; thumbnails appear in the "
            "detail panel for selected points (Plotly hover labels cannot show images).")
ex = ak.require_explorer(s)
cat, _ = ak.require_catalog(s, ex)

ss = st.session_state
ss.setdefault("map_method", "pca")  # set once, then kept across pages (appkit.keep_choices)
ss.setdefault("map_dim", 2)
c1, c2, c3, c4, c5 = st.columns([1, 1, 1, 1, 1])
kind = c1.selectbox("Embedding", ["fused", *MODALITIES], key="map_kind")
method = c2.segmented_control("Method", ["pca", "umap"], key="map_method",
                              help="PCA is instant; UMAP takes a while the first time, then it is cached") or "pca"
dim = c3.segmented_control("Dimensions", [2, 3], key="map_dim") or 2
color_by = c4.selectbox("Colour by", ["category", "source", "missing pattern"], key="map_color")
level = c5.selectbox("Category level", ["broad (first level)", "middle (two levels)", "full"], index=2, key="map_level",
                     disabled=color_by != "category", help="e.g. Footwear / Footwear/Shoes / Footwear/Shoes/Heels")

X = cat.embedding(kind)
rows = np.flatnonzero(cat.present[:, MODALITIES.index(kind)]) if kind in MODALITIES else np.arange(len(cat))
if len(rows) < 3:
    st.error(f"Only {len(rows)} catalog products have {kind}. Fix: choose another embedding.")
    st.stop()
key = ak.catalog_key(s, cat)
with st.status(f"Fitting {method.upper()} on {len(rows):,} products…", expanded=False) as status:
    prog = st.progress(0.0, text="projecting")
    proj = ak.projection(key, kind, method, int(dim), X[rows])
    prog.progress(1.0, text="done")
    status.update(label=f"{proj.method.upper()} map of {len(rows):,} products (cached)", state="complete")
if proj.method != method:
    st.caption(f"{method.upper()} needs more products; PCA is shown instead.")
if proj.fitted is not None:
    st.caption(f"UMAP was fitted on a sample of {len(proj.fitted):,} products; the other {len(rows) - len(proj.fitted):,} "
               "are placed on its map the way uploads are.")

patterns = cat.pattern()
cats = cat.categories
if color_by == "category" and not level.startswith("full"):
    depth = 1 if level.startswith("broad") else 2
    cats = np.array(["/".join(c.split("/")[:depth]) for c in cat.categories.tolist()])
labels = {"category": cats, "source": cat.sources, "missing pattern": patterns}[color_by][rows]
labels = np.where(labels == "", "(unknown)", labels)
PALETTE = pc.qualitative.Dark24 + pc.qualitative.Light24  # 48 distinct colours: one per legend entry
top = pd.Series(labels).value_counts().index[: len(PALETTE) - 1]
labels = np.where(np.isin(labels, top), labels, "(other)")

fig = go.Figure()
Scatter = go.Scattergl if dim == 2 else go.Scatter3d
for n_lab, lab in enumerate(sorted(set(labels.tolist()))):
    sel = np.flatnonzero(labels == lab)
    idx = rows[sel]
    kw = dict(x=proj.coords[sel, 0], y=proj.coords[sel, 1], mode="markers", name=str(lab), customdata=idx,
              text=[f"{cat.titles[i] or cat.ids[i]}<br>{cat.categories[i]}<br>{cat.ids[i]}" for i in idx],
              hovertemplate="%{text}<extra></extra>",
              marker=dict(size=6 if dim == 2 else 3, opacity=0.8,
                          color="#9e9e9e" if lab == "(other)" else PALETTE[n_lab % len(PALETTE)]))
    if dim == 3:
        kw["z"] = proj.coords[sel, 2]
    fig.add_trace(Scatter(**kw))

name, entry = ak.current(required=False)
placed = []
SYMBOLS = ["star", "diamond", "square", "triangle-up", "pentagon", "hexagon", "cross", "x", "star-diamond", "hourglass"]
SYMBOLS_3D = ["diamond", "square", "cross", "x", "circle-open", "diamond-open", "square-open"]
for n_p, (pname, e) in enumerate(ak.products().items()):
    if kind != "fused" and not e["decoded"].present()[kind]:
        continue
    a = ak.analysis(ex, e)  # one forward pass per product, shared with the other pages
    v = a.fused if kind == "fused" else l2n(a.pooled[kind][None])[0]
    xy = proj.transform(v[None])[0]
    placed.append({"product": pname, **{f"c{i}": float(c) for i, c in enumerate(xy)}})
    now = pname == name  # the current product: larger, gold, named on the map
    sym = SYMBOLS[n_p % len(SYMBOLS)] if dim == 2 else SYMBOLS_3D[n_p % len(SYMBOLS_3D)]
    kw = dict(x=[xy[0]], y=[xy[1]], mode="markers+text" if now else "markers",
              name=f"{'▶ current: ' if now else 'yours: '}{pname}", text=[pname], textposition="top center",
              marker=dict(symbol=sym, size=(22 if now else 14) if dim == 2 else (9 if now else 6),
                          color="gold" if now else "black", line=dict(color="black" if now else "gold", width=2)),
              hovertemplate=f"{pname} (yours{', current' if now else ''})<extra></extra>")
    if dim == 3:
        kw["z"] = [xy[2]]
    fig.add_trace(Scatter(**kw))
legend_title = {"category": f"Category ({level.split(' ')[0]})", "source": "Source",
                "missing pattern": "Modalities: T text, B table,<br>I image, V video, A audio; - absent"}[color_by]
fig.update_layout(height=620, margin=dict(l=10, r=10, t=30, b=10), legend=dict(itemsizing="constant", title=legend_title),
                  title=f"{proj.method.upper()} of the {kind} embeddings", dragmode="lasso",
                  xaxis_title=f"{proj.method.upper()} 1", yaxis_title=f"{proj.method.upper()} 2")
if dim == 3:
    fig.update_layout(scene=dict(xaxis_title=f"{proj.method.upper()} 1", yaxis_title=f"{proj.method.upper()} 2",
                                 zaxis_title=f"{proj.method.upper()} 3"))
map_col, thumb_col = st.columns([4, 1])
with map_col:
    event = st.plotly_chart(fig, key="map", on_select="rerun", selection_mode=("points", "box", "lasso"))
st.caption("Drag draws a lasso (the toolbar has box select, pan and zoom); click a point to see it on the right. "
           "Presence codes: T text, B table, I image, V video, A audio, - absent (e.g. `T-I--` = text and image only).")

picked = []
try:
    picked = [int(p["customdata"]) for p in event.selection.points if p.get("customdata") is not None]
except (AttributeError, KeyError, TypeError, ValueError):
    picked = []
with thumb_col:
    st.markdown("**Clicked product**")
    if picked:
        i = picked[0]
        if cat.thumbnails[i]:
            try:
                st.image(cat.thumbnails[i], width="stretch")
            except Exception:  # noqa: BLE001 - an unreadable thumbnail must not hide the details
                st.caption("(thumbnail unreadable)")
        st.markdown(f"{(cat.titles[i] or cat.ids[i])[:80]}")
        st.caption(f"{cat.categories[i] or 'no category'} · `{patterns[i]}` · {cat.ids[i]}")
    else:
        st.caption("Click a point (or lasso some) to see its picture here.")
if picked:
    st.subheader(f"Selected: {len(picked)} products")
    sel_df = pd.DataFrame({"id": cat.ids[picked], "title": cat.titles[picked], "category": cat.categories[picked],
                           "source": cat.sources[picked], "present": patterns[picked]})
    st.dataframe(sel_df, hide_index=True, width="stretch")
    thumbs = [(cat.thumbnails[i], cat.titles[i] or cat.ids[i]) for i in picked[:12] if cat.thumbnails[i]]
    if thumbs:
        st.image([t for t, _ in thumbs], caption=[c[:40] for _, c in thumbs], width=110)
else:
    st.caption("Select points (click, box or lasso) to list them here with thumbnails.")

nn_df = None
if entry is not None:
    st.subheader(f"Nearest catalog neighbours of {name} ({kind})")
    q = ak.analysis(ex, entry).fused if kind == "fused" else ak.analysis(ex, entry).pooled[kind]
    if not np.any(q):
        st.caption(f"{name} has no {kind}.")
    else:
        index = ak.gallery_index(s, cat, kind, X)  # None below the exact threshold: exact search
        idx, sc = search_gallery(X, q, 10, ak.excluded(ex, s, cat, entry), index)
        st.caption(f"Answered by {describe(index, len(X))}.")
        nn_df = pd.DataFrame({"rank": np.arange(1, len(idx) + 1), "score (cosine)": sc.round(4), "id": cat.ids[idx],
                              "title": cat.titles[idx], "category": cat.categories[idx]})
        st.dataframe(nn_df, hide_index=True, width="stretch")
coords = pd.DataFrame({"id": cat.ids[rows], "label": labels, **{f"c{i}": proj.coords[:, i] for i in range(proj.coords.shape[1])}})
ak.downloads("embedding_map", pd.concat([coords, pd.DataFrame(placed)], ignore_index=True), fig)
