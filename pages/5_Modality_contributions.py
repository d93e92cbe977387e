"""Which modality matters: exact Shapley values, leave-one-out and JCT attention shares."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: pages import appkit and core

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import appkit as ak
from core.contributions import modality_contributions

s = ak.page("Modality contributions",
            "How much each modality of the current product contributes to (a) its mean cosine similarity with its "
            "k nearest catalog neighbours and (b) how well it retrieves products of its own category (AP@10). "
            "Shapley values are exact over every subset of the present modalities (they add up to the full "
            "product's value); leave-one-out is the drop when only that modality is removed. The attention "
            "matrix shows where each modality's tokens look inside the joint co-transformer.")
ex = ak.require_explorer(s)
cat, _ = ak.require_catalog(s, ex)
name, entry = ak.current()
feats, product = entry["features"], entry["product"]

c1, c2 = st.columns(2)
k = c1.slider("Neighbours k", 1, max(1, min(50, len(cat) - 1)), min(10, max(1, len(cat) - 1)), key="ct_k")
cats = sorted(set(cat.categories.tolist()) - {""})
default = product.category if product.category in cats else None
category = c2.selectbox("Category for retrieval (positives)", [None, *cats], key="ct_cat",
                        index=([None, *cats].index(default) if default else 0),
                        format_func=lambda c: "(none: skip retrieval)" if c is None else c)
res = modality_contributions(ex.model, feats, cat, k=k, category=category, product_id=product.id)
tbl = res.table()

fig = go.Figure()
for col, label in [("shapley_similarity", "Shapley · neighbour similarity"), ("loo_similarity", "LOO · neighbour similarity"),
                   ("shapley_ap", "Shapley · category AP@10"), ("loo_ap", "LOO · category AP@10")]:
    if col in tbl:
        fig.add_trace(go.Bar(x=tbl["modality"], y=tbl[col], name=label, text=tbl[col].round(3), textposition="outside"))
fig.update_layout(barmode="group", height=400, title=f"Contributions of the {len(res.modalities)} present modalities of {name}",
                  margin=dict(l=10, r=10, t=40, b=10), yaxis_title="contribution")
st.plotly_chart(fig, key="ct_bars")
full = frozenset(res.modalities)
m1, m2, m3 = st.columns(3)
m1.metric("Neighbour similarity, all modalities", f"{res.values['similarity'][full]:.3f}",
          help="= sum of the Shapley values (v(no modality) = 0)")
if "ap" in res.values:
    m2.metric("Category AP@10, all modalities", f"{res.values['ap'][full]:.3f}")
    m3.metric("Rank of the first same-category product", res.ranks[full])
elif category is None:
    m2.caption("Pick a category to score retrieval (uploads have none).")
else:
    m2.caption(f"No other catalog product is in {category}.")
with st.expander("Every subset (the values the Shapley sums are made of)"):
    st.dataframe(res.subset_table(), hide_index=True, width="stretch")

st.subheader("Cross-modal attention in the joint co-transformer")
a = ak.analysis(ex, entry)
st.plotly_chart(ak.matrix_figure(a.attention, "Attention share: row = query modality, column = key modality",
                                 zmin=0, zmax=1, colorscale="Greens"), key="ct_att")
st.caption("Averaged over heads, layers and the modality's tokens; each row sums to 1. Grey rows: absent modalities.")

st.subheader("Catalog-wide: mean Shapley value per category")
d1, d2 = st.columns(2)
per = d1.slider("Products sampled per category", 1, 10, 3, key="ct_per")
maxc = d2.slider("Categories (largest first)", 1, 30, 8, key="ct_maxc")
wide = None
if st.toggle("Compute catalog-wide contributions", key="ct_wide"):
    prog = st.progress(0.0, text="starting")
    wide = ak.catalog_wide(ex, cat, ak.catalog_key(s, cat), per, maxc, s,
                           lambda f, t: prog.progress(min(max(f, 0.0), 1.0), text=t))
    prog.empty()
    if wide.empty:
        st.info("The catalog has no categories to group by.")
    else:
        mods = [m for m in wide.columns if m != "n"]
        hm = go.Figure(go.Heatmap(z=wide[mods].to_numpy(dtype=float), x=mods, y=[f"{c} (n={n})" for c, n in zip(wide.index, wide["n"])],
                                  colorscale="Viridis", hoverongaps=False,
                                  text=np.vectorize(lambda v: "absent" if not np.isfinite(v) else f"{v:.3f}")(wide[mods].to_numpy(dtype=float)),
                                  texttemplate="%{text}"))
        hm.update_layout(height=120 + 28 * len(wide), plot_bgcolor=ak.GREY, margin=dict(l=10, r=10, t=30, b=10),
                         title="Mean Shapley (neighbour similarity)")
        st.plotly_chart(hm, key="ct_wide_fig")
data = tbl.set_index("modality")
ak.downloads("modality_contributions", data if wide is None else pd.concat({"product": data, "catalog": wide}), fig)
