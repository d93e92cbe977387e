"""Retrieval: query with some of the current product's modalities, search one gallery embedding of the catalog."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: pages import appkit and core

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import appkit as ak
from core.contributions import present_of
from core.modalities import MODALITIES
from core.projection import nearest

s = ak.page("Retrieval",
            "The query is the current product restricted to the modalities you tick (the model runs on only those; "
            "its embedding is the sum of their normalized pooled features, each minus its mean over the training "
            "products: the model's fused embedding). It is "
            "compared by cosine with the chosen gallery embedding of every catalog product. ✅ marks products of the "
            "query's category.")
ex = ak.require_explorer(s)
cat, _ = ak.require_catalog(s, ex)
name, entry = ak.current()
feats, product = entry["features"], entry["product"]

have = present_of(feats)
c1, c2, c3 = st.columns([2, 1, 1])
keep = c1.multiselect("Query modalities", have, default=have, key="rt_query")
gallery = c2.selectbox("Gallery embedding", ["fused", *MODALITIES], key="rt_gallery",
                       help="fused: the catalog products' fused embeddings; a modality: that modality's token only")
k = c3.slider("Top k", 1, min(50, len(cat)), min(12, len(cat)), key="rt_k")
if not keep:
    st.error("Pick at least one query modality.")
    st.stop()
q = ak.analysis(ex, entry).fused if set(keep) == set(have) else ex.embed(feats, keep)  # all: the shared pass
G = cat.embedding(gallery)
idx, sc = nearest(q, G, k=k, exclude=cat.ids == product.id)
hit = (cat.categories[idx] == product.category) if product.category else np.zeros(len(idx), bool)
df = pd.DataFrame({"rank": np.arange(1, len(idx) + 1), "score": sc.round(4), "id": cat.ids[idx],
                   "title": cat.titles[idx], "category": cat.categories[idx], "same_category": hit,
                   "present": cat.pattern()[idx]})
if product.category:
    st.metric(f"Same-category hits in the top {len(idx)}", f"{int(hit.sum())} / {len(idx)}")
per_row = 6
for r in range(0, len(idx), per_row):
    cols = st.columns(per_row)
    for c, j in zip(cols, range(r, min(r + per_row, len(idx)))):
        i = idx[j]
        with c:
            if cat.thumbnails[i]:
                try:
                    st.image(cat.thumbnails[i], width="stretch")
                except Exception:  # noqa: BLE001 - a missing thumbnail must not hide the result
                    ak.log.warning("thumbnail %s unreadable", cat.thumbnails[i], exc_info=True)
                    st.caption("(thumbnail unreadable)")
            else:
                st.caption("(no image)")
            st.markdown(f"**{j + 1}.** {'✅ ' if hit[j] else ''}{(cat.titles[i] or cat.ids[i])[:60]}")
            st.caption(f"{sc[j]:.3f} · {cat.categories[i] or 'no category'}")
fig = go.Figure(go.Bar(x=sc, y=[f"{j + 1}. {(cat.titles[i] or cat.ids[i])[:40]}" for j, i in enumerate(idx)], orientation="h",
                       marker_color=np.where(hit, "#2ca02c", "#7f7f7f")))
fig.update_layout(height=150 + 22 * len(idx), yaxis=dict(autorange="reversed"), xaxis_title="cosine score",
                  title=f"Query {'+'.join(keep)} → gallery {gallery}", margin=dict(l=10, r=10, t=40, b=10))
st.plotly_chart(fig, key="rt_fig")
ak.downloads("retrieval", df, fig)
