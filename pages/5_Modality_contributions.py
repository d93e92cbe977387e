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
from core.explore.contributions import modality_contributions

s = ak.page("Modality contributions",
            "How much each modality of the current product contributes to (a) its mean cosine similarity with its "
            "k nearest catalog neighbours and (b) how well it retrieves products of its own category (AP@10). "
            "Shapley values are exact over every subset of the present modalities (they add up to the full "
            "product's value); leave-one-out is the drop when only that modality is removed. The attention "
            "matrix shows where each modality's tokens look inside the joint co-transformer.")
ex = ak.require_explorer(s)
cat, _ = ak.require_catalog(s, ex)
name, entry = ak.current()
exclude = ak.excluded(ex, s, cat, entry)  # the product and its catalog duplicate; sets an upload's inferred category
feats, product = entry["features"], entry["product"]

c1, c2 = st.columns(2)
k = c1.slider("Neighbours k", 1, max(1, min(50, len(cat) - 1)), min(10, max(1, len(cat) - 1)), key="ct_k")
cats = sorted(set(cat.categories.tolist()) - {""})
ckey = f"ct_cat:{name}"  # per product: its own category is the default
if ckey in st.session_state and st.session_state[ckey] not in [None, *cats]:
    st.session_state.pop(ckey)
if ckey not in st.session_state:
    st.session_state[ckey] = product.category if product.category in cats else None
category = c2.selectbox("Category for retrieval (positives)", [None, *cats], key=ckey,
                        format_func=lambda c: "(none: skip retrieval)" if c is None else c)
res = modality_contributions(ex.model, feats, cat, k=k, category=category, product_id=product.id, exclude=exclude)
tbl = res.table()
METRICS = {"shapley_similarity": "Shapley · neighbour similarity", "loo_similarity": "Leave-one-out · neighbour similarity",
           "shapley_ap": "Shapley · category AP@10", "loo_ap": "Leave-one-out · category AP@10"}

# the headline: one metric, one sentence
main = tbl.set_index("modality")["shapley_similarity"]
top = str(main.idxmax())
total = float(main.sum())
share = float(main.max()) / total if total > 0 else float("nan")
st.subheader(f"For this product, {top} matters most")
st.markdown(f"**{top}** brings {main.max():.3f} of the {total:.3f} neighbour similarity"
            + (f" ({share:.0%})" if np.isfinite(share) else "") + ", by its Shapley value: its average gain when it "
            "joins any subset of the other present modalities.")
show_all = st.toggle("Also show leave-one-out and category AP", key="ct_all",
                     help="Leave-one-out: the drop when only that modality is removed. AP: how well the product "
                          "retrieves its category (needs a category).")
cols = [c for c in METRICS if c in tbl and (show_all or c == "shapley_similarity")]
fig = go.Figure()
for col in cols:
    fig.add_trace(go.Bar(x=tbl["modality"], y=tbl[col], name=METRICS[col], text=tbl[col].round(3), textposition="outside"))
fig.update_layout(barmode="group", height=400, title=f"Contributions of the {len(res.modalities)} present modalities of {name}",
                  margin=dict(l=10, r=10, t=40, b=10), xaxis_title="modality",
                  yaxis_title="contribution (cosine or AP units)" if show_all else "Shapley value (mean cosine to the k neighbours)",
                  showlegend=len(cols) > 1)
st.plotly_chart(fig, key="ct_bars")
full = frozenset(res.modalities)
m1, m2, m3 = st.columns(3)
m1.metric("Neighbour similarity, all modalities", f"{res.values['similarity'][full]:.3f}",
          help="= sum of the Shapley values (v(no modality) = 0)")
if show_all and "ap" in res.values:
    m2.metric("Category AP@10, all modalities", f"{res.values['ap'][full]:.3f}")
    m3.metric("Rank of the first same-category product", res.ranks[full])
elif show_all and category is None:
    m2.caption("Pick a category to score retrieval.")
elif show_all:
    m2.caption(f"No other catalog product is in {category}.")
if exclude.sum() > (cat.ids == product.id).sum():
    st.caption("This upload duplicates a catalog product, which is left out of its neighbours and AP.")
with st.expander("Every subset (the values the Shapley sums are made of)"):
    st.dataframe(res.subset_table(), hide_index=True, width="stretch")

st.subheader("Cross-modal attention in the joint co-transformer")
a = ak.analysis(ex, entry)
st.plotly_chart(ak.matrix_figure(a.attention, "Attention share: row = query modality, column = key modality",
                                 zmin=0, zmax=1, colorscale="Greens"), key="ct_att")
st.caption("Averaged over heads, layers and the modality's tokens; each row sums to 1. Grey rows: absent modalities.")

st.subheader("Catalog-wide: mean Shapley value per category")
d1, d2 = st.columns(2)
per = d1.slider("Products sampled per category", 1, 10, 2, key="ct_per")
maxc = d2.slider("Categories (largest first)", 1, 30, 6, key="ct_maxc")
st.caption(f"Costs one forward of every modality subset for {per * maxc} products (seconds with the feature cache); "
           "the answer is cached on disk, so it comes back at once for the same catalog and choices.")
wide = None
if st.toggle("Compute catalog-wide contributions", key="ct_wide"):
    wide = ak.catalog_wide(ex, cat, ak.catalog_key(s, cat), per, maxc, s)
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
