"""Embedding map of the catalog (UMAP or PCA), session products placed on it without refitting."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: pages import appkit and core

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import appkit as ak
from core.metrics import l2n
from core.modalities import MODALITIES
from core.projection import nearest

s = ak.page("Embedding map",
            "Each dot is a catalog product, placed by a 2-D/3-D projection of its embedding (fused, or one modality's "
            "pooled feature). Products of one category should cluster. Your products (stars) are placed on the "
            "fitted map with .transform, so the map never moves. Hover shows the title; thumbnails appear in the "
            "detail panel for selected points (Plotly hover labels cannot show images).")
ex = ak.require_explorer(s)
cat, _ = ak.require_catalog(s, ex)

c1, c2, c3, c4 = st.columns(4)
kind = c1.selectbox("Embedding", ["fused", *MODALITIES], key="map_kind")
method = c2.segmented_control("Method", ["pca", "umap"], default="pca", key="map_method",
                              help="PCA is instant; UMAP takes a while the first time, then it is cached") or "pca"
dim = c3.segmented_control("Dimensions", [2, 3], default=2, key="map_dim") or 2
color_by = c4.selectbox("Colour by", ["category", "source", "missing pattern"], key="map_color")

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

patterns = cat.pattern()
labels = {"category": cat.categories, "source": cat.sources, "missing pattern": patterns}[color_by][rows]
labels = np.where(labels == "", "(unknown)", labels)
top = pd.Series(labels).value_counts().index[:20]
labels = np.where(np.isin(labels, top), labels, "(other)")  # a legend of > 20 colours helps nobody

fig = go.Figure()
Scatter = go.Scattergl if dim == 2 else go.Scatter3d
for lab in sorted(set(labels.tolist())):
    sel = np.flatnonzero(labels == lab)
    idx = rows[sel]
    kw = dict(x=proj.coords[sel, 0], y=proj.coords[sel, 1], mode="markers", name=str(lab), customdata=idx,
              text=[f"{cat.titles[i] or cat.ids[i]}<br>{cat.categories[i]}<br>{cat.ids[i]}" for i in idx],
              hovertemplate="%{text}<extra></extra>", marker=dict(size=6 if dim == 2 else 3, opacity=0.8))
    if dim == 3:
        kw["z"] = proj.coords[sel, 2]
    fig.add_trace(Scatter(**kw))

name, entry = ak.current(required=False)
placed = []
for pname, e in ak.products().items():
    if kind != "fused" and not e["decoded"].present()[kind]:
        continue
    a = ak.analysis(ex, e)  # one forward pass per product, shared with the other pages
    v = a.fused if kind == "fused" else l2n(a.pooled[kind][None])[0]
    xy = proj.transform(v[None])[0]
    placed.append({"product": pname, **{f"c{i}": float(c) for i, c in enumerate(xy)}})
    kw = dict(x=[xy[0]], y=[xy[1]], mode="markers+text", name=f"★ {pname}", text=[pname], textposition="top center",
              marker=dict(symbol="star" if dim == 2 else "diamond", size=18 if dim == 2 else 8, color="black",
                          line=dict(color="gold", width=2)), hovertemplate=f"{pname} (yours)<extra></extra>")
    if dim == 3:
        kw["z"] = [xy[2]]
    fig.add_trace(Scatter(**kw))
fig.update_layout(height=620, margin=dict(l=10, r=10, t=30, b=10), legend=dict(itemsizing="constant"),
                  title=f"{proj.method.upper()} of the {kind} embeddings")
event = st.plotly_chart(fig, key="map", on_select="rerun", selection_mode=("points", "box", "lasso"))

picked = []
try:
    picked = [int(p["customdata"]) for p in event.selection.points if p.get("customdata") is not None]
except (AttributeError, KeyError, TypeError, ValueError):
    picked = []
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
        idx, sc = nearest(q, X, k=10, exclude=cat.ids == entry["product"].id)
        nn_df = pd.DataFrame({"rank": np.arange(1, len(idx) + 1), "score (cosine)": sc.round(4), "id": cat.ids[idx],
                              "title": cat.titles[idx], "category": cat.categories[idx]})
        st.dataframe(nn_df, hide_index=True, width="stretch")
coords = pd.DataFrame({"id": cat.ids[rows], "label": labels, **{f"c{i}": proj.coords[:, i] for i in range(proj.coords.shape[1])}})
ak.downloads("embedding_map", pd.concat([coords, pd.DataFrame(placed)], ignore_index=True), fig)
