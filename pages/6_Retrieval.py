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
from core.modalities import present_names
from core.explore.explorer import LOW_COSINE
from core.modalities import MODALITIES
from core.explore.ann import describe, search_gallery

s = ak.page("Retrieval",
            "The query is the current product restricted to the modalities you tick (the model runs on only those; "
            "its embedding is the sum of their normalized pooled features, each minus its mean over the training "
            "products: the model's fused embedding). It is "
            "compared by cosine with the chosen gallery embedding of every catalog product. ✅ marks products of the "
            "query's category.")
ex = ak.require_explorer(s)
cat, _ = ak.require_catalog(s, ex)
name, entry = ak.current()
match = ak.catalog_match(ex, s, cat, entry)  # duplicate check; an upload gets its inferred category here
feats, product = entry["features"], entry["product"]

# the query, so the results can be judged against it
q1, q2 = st.columns([1, 5])
d = entry["decoded"]
if d.images:
    q1.image(ak.square_crop(d.images[0]), width="stretch")
q2.markdown(f"**Query: {name}**  \n{product.category or 'no category'}"
            + (" (inferred from the nearest catalog products)" if entry.get("category_source") == "inferred" else ""))
q2.markdown("Present: " + ak.present_badges(d.present()))
if match.duplicate_id is not None:
    q2.caption(f"Also in the catalog as `{match.duplicate_id}` (cosine {match.duplicate_cosine:.4f}): left out of "
               "the results, so it is not its own rank-1 match.")

have = present_names(feats)
c1, c2, c3 = st.columns([2, 1, 1])
qkey = f"rt_query:{name}"  # the choice depends on what this product has
if qkey not in st.session_state:
    st.session_state[qkey] = have
keep = c1.multiselect("Query modalities", have, key=qkey)
gallery = c2.selectbox("Gallery embedding", ["fused", *MODALITIES], key="rt_gallery",
                       help="fused: the catalog products' fused embeddings; a modality: that modality's token only")
k = c3.slider("Top k", 1, min(50, len(cat)), min(12, len(cat)), key="rt_k")
if not keep:
    st.error("Pick at least one query modality.")
    st.stop()
q = ak.analysis(ex, entry).fused if set(keep) == set(have) else ex.embed(feats, keep)  # all: the shared pass
G = cat.embedding(gallery)
index = ak.gallery_index(s, cat, gallery, G)  # None below the exact threshold: exact search
idx, sc = search_gallery(G, q, k, match.exclude(cat.ids, product.id), index)
st.caption(f"Answered by {describe(index, len(G))}.")
if len(sc) and float(sc[0]) < LOW_COSINE:
    st.warning(f"Weak matches: the best cosine is {float(sc[0]):.2f} (below {LOW_COSINE}), so the model finds nothing "
               f"close to this {'+'.join(keep)} query in the {gallery} gallery; the ranking below is close to chance. "
               "Fix: query with more modalities or search the fused gallery.")
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
