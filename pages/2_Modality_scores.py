"""The per-product score matrix S and the harmonized weights S' (SCALE.md section 5)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: pages import appkit and core

import numpy as np
import plotly.graph_objects as go
import streamlit as st

import appkit as ak
from core.explore.catalog_check import matrix_percentiles, s_centred, takeaway
from core.modalities import MODALITIES

s = ak.page("Modality scores S and S′",
            "S says how much two of this product's modalities agree: each cell is the cosine of their pooled features "
            "(before fusion), after removing what every product's modality has in common, so 0 means no more alike "
            "than two random products' and 1 means the same direction. S′ = S ⊙ softmax(S), rows L2-normalized, is "
            "how much weight training puts on each pair's contrastive loss (off-diagonal) and each modality's masked "
            "task (diagonal). Colours are fitted to this product's values; the percentiles put each pair against the "
            "catalog's products. Grey cells are absent modalities, not zeros.",
            tab="Modality scores")
ex = ak.require_explorer(s)
name, entry = ak.current()
cat, _ = ak.require_catalog(s, ex)
cs = ak.catalog_scores(ak.catalog_key(s, cat), cat, s_centred(ex.model.cfg))  # S as this model computes it

missing = st.segmented_control("Missing modalities", ["mask", "zero"], default="mask", key="scores_missing",
                               help="mask: absent modalities are dropped (ours); zero: the authors' zero imputation, "
                                    "zero tokens that are attended to and enter S") or "mask"
compare_zero = st.toggle("Show what zero imputation does to S (mask vs zero side by side)", key="scores_cmp_zero")
a = ak.analysis(ex, entry, missing)
st.markdown(f"**{name}** · present: " + ak.present_badges(list(a.present)))
absent = [m for m, p in zip(MODALITIES, a.present) if not p]
if absent:
    st.caption(f"This product lacks {', '.join(absent)}: *mask* leaves it out of S, *zero* feeds zero tokens in "
               "its place, which then get a row in S and take weight from the real modalities.")
else:
    st.caption("This product has all five modalities, so *mask* and *zero* give the same S and S′: the toggle "
               "only matters when a modality is missing.")
P = matrix_percentiles(a.S, cs)
line = takeaway(a.S, cs)
if line:
    st.markdown(f"**Against the catalog** ({len(cat)} products): {line}")


def fitted(M: np.ndarray, diagonal: bool = False) -> tuple[float, float]:
    """Colour range of M's finite values (off-diagonal unless `diagonal`), so that cells differ in colour."""
    M = np.asarray(M, dtype=float)
    vals = M[np.isfinite(M) & (np.ones_like(M, bool) if diagonal else ~np.eye(len(M), dtype=bool))]
    if not len(vals):
        return -1.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    pad = max(0.02, 0.05 * (hi - lo))
    return lo - pad, hi + pad


def margins(fig):
    """Room for the full axis labels, in the app and in exported PNGs."""
    fig.update_layout(margin=dict(l=70, r=20, t=50, b=60))
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def s_figure(M: np.ndarray, title: str):
    return margins(ak.matrix_figure(M, title, *fitted(M)))


def sp_figure(M: np.ndarray, title: str):
    return margins(ak.matrix_figure(M, title, *fitted(M, diagonal=True), colorscale="Blues", fmt=".3f"))


def diff_figure(M: np.ndarray, title: str):
    r = float(np.nanmax(np.abs(M))) if np.isfinite(M).any() else 1.0
    return margins(ak.matrix_figure(M, title, -max(r, 1e-3), max(r, 1e-3), colorscale="PiYG", fmt="+.2f"))


c1, c2, c3 = st.columns(3)
fig_s = s_figure(a.S, f"S (cosine), missing={missing}")
c1.plotly_chart(fig_s, key="S")
fig_sp = sp_figure(a.S_prime, f"S′ (harmonized weights), missing={missing}")
c2.plotly_chart(fig_sp, key="Sp")
fig_p = margins(ak.matrix_figure(P, "Percentile of S among catalog products", 0, 100, colorscale="RdYlGn", fmt=".0f"))
c3.plotly_chart(fig_p, key="S_pct")
c3.caption("Share (%) of catalog products with the same pair whose S is lower: low means this pair agrees less "
           "than usual. The diagonal has no percentile.")
diag = np.diag(a.S_prime)
bar = go.Figure(go.Bar(x=list(MODALITIES), y=np.where(np.isfinite(diag), diag, 0.0),
                       text=["absent" if not np.isfinite(v) else f"{v:.3f}" for v in diag], textposition="outside",
                       marker_color=[ak.GREY if not np.isfinite(v) else "#1f77b4" for v in diag]))
bar.update_layout(title="Diagonal of S′: weight of each modality's masked task", height=300,
                  yaxis_title="S′ᵢᵢ", margin=dict(l=60, r=10, t=40, b=40))
st.plotly_chart(bar, key="diag")

data = {"product": name, "missing": missing, "modalities": list(MODALITIES), "present": a.present.tolist(),
        "S": ak.matrix_json(a.S), "S_prime": ak.matrix_json(a.S_prime),
        "S_percentile_in_catalog": ak.matrix_json(P), "takeaway": line, "catalog_products": len(cat)}
if compare_zero:
    other = ak.analysis(ex, entry, "zero" if missing == "mask" else "mask")
    st.subheader("mask vs zero imputation")
    st.caption("Under zero imputation an absent modality still has a pooled feature (computed from zero tokens), so it "
               "gets a row in S and takes softmax weight from the real modalities.")
    m_a, z_a = (a, other) if missing == "mask" else (other, a)
    z1, z2, z3 = st.columns(3)
    lo, hi = np.minimum(fitted(m_a.S), fitted(z_a.S))[0], np.maximum(fitted(m_a.S), fitted(z_a.S))[1]
    z1.plotly_chart(margins(ak.matrix_figure(m_a.S, "S, missing=mask", lo, hi)), key="S_mask")
    z2.plotly_chart(margins(ak.matrix_figure(z_a.S, "S, missing=zero", lo, hi)), key="S_zero")
    z3.plotly_chart(diff_figure(z_a.S_prime - m_a.S_prime, "S′(zero) − S′(mask)"), key="S_diff")
    data["S_zero"], data["S_mask"] = ak.matrix_json(z_a.S), ak.matrix_json(m_a.S)

others = [n for n in ak.products() if n != name]
if others:
    st.subheader("Side by side")
    cmp = st.selectbox("Compare with", others, key="compare")
    b = ak.analysis(ex, ak.products()[cmp], missing)
    d1, d2, d3 = st.columns(3)
    lo = min(fitted(a.S)[0], fitted(b.S)[0])
    hi = max(fitted(a.S)[1], fitted(b.S)[1])  # one scale for both, so equal colours mean equal values
    d1.plotly_chart(margins(ak.matrix_figure(a.S, f"S · {name}", lo, hi)), key="S_a")
    d2.plotly_chart(margins(ak.matrix_figure(b.S, f"S · {cmp}", lo, hi)), key="S_b")
    d3.plotly_chart(diff_figure(a.S - b.S, f"S · {name} − S · {cmp}"), key="S_ab")
    d1.plotly_chart(sp_figure(a.S_prime, f"S′ · {name}"), key="Sp_a")
    d2.plotly_chart(sp_figure(b.S_prime, f"S′ · {cmp}"), key="Sp_b")
    d3.plotly_chart(diff_figure(a.S_prime - b.S_prime, f"S′ · {name} − S′ · {cmp}"), key="Sp_ab")
    d3.caption("Green: the first product's pair agrees more; pink: the second's. Grey: absent in either.")
    data["compare"] = {"product": cmp, "S": ak.matrix_json(b.S), "S_prime": ak.matrix_json(b.S_prime),
                       "S_difference": ak.matrix_json(a.S - b.S)}
else:
    st.caption("Add a second product on Upload and inspect to compare two side by side.")

st.subheader("Batch-mean S′ during training")
log = ak.train_log(s)
if log is None or log.s_prime is None:
    st.info(f"No training log with S′ in {ak.label(s.ckpt_dir)} (train_metrics.jsonl or metrics.jsonl). "
            "The trainer writes one line per step; copy it beside the model to see this chart.")
else:
    steps, sp = log.steps, log.s_prime  # (T,), (T, 5, 5)
    fig_t = go.Figure()
    for i, m in enumerate(MODALITIES):
        for j in range(i, len(MODALITIES)):
            if np.isfinite(sp[:, i, j]).any():
                fig_t.add_trace(go.Scatter(x=steps, y=sp[:, i, j], mode="lines", name=f"{m}–{MODALITIES[j]}",
                                           line=dict(width=3 if i == j else 1.2, dash=None if i == j else "dot")))
    fig_t.update_layout(title="S′ averaged over each training batch (thick: diagonal)", xaxis_title="step",
                        yaxis_title="S′", height=380, margin=dict(l=60, r=10, t=40, b=50))
    st.plotly_chart(fig_t, key="sp_traj")
    step = st.select_slider("Step", options=steps.tolist(), value=int(steps[-1]), key="sp_step")
    st.plotly_chart(sp_figure(sp[list(steps).index(step)], f"Batch-mean S′ at step {step}"), key="sp_at_step")
ak.downloads("modality_scores", data, fig_s)
