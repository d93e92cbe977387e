"""The per-product score matrix S and the harmonized weights S' (SCALE.md section 5)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: pages import appkit and core

import numpy as np
import plotly.graph_objects as go
import streamlit as st

import appkit as ak
from core.modalities import MODALITIES

s = ak.page("Modality scores S and S′",
            "S is the cosine similarity between the product's five pooled modality features (before fusion); "
            "S′ = S ⊙ softmax(S) with rows L2-normalized are the weights SCALE puts on each pair's contrastive loss "
            "(off-diagonal) and each modality's masked task (diagonal). Grey cells are absent modalities, not zeros.",
            tab="Modality scores")
ex = ak.require_explorer(s)
name, entry = ak.current()

missing = st.segmented_control("Missing modalities", ["mask", "zero"], default="mask", key="scores_missing",
                               help="mask: absent modalities are dropped (ours); zero: the authors' zero imputation, "
                                    "zero tokens that are attended to and enter S") or "mask"
compare_zero = st.toggle("Show what zero imputation does to S (mask vs zero side by side)", key="scores_cmp_zero")
a = ak.analysis(ex, entry, missing)
st.markdown(f"**{name}** · present: " + ak.present_badges(list(a.present)))

c1, c2 = st.columns(2)
fig_s = ak.matrix_figure(a.S, f"S (cosine), missing={missing}")
c1.plotly_chart(fig_s, key="S")
fig_sp = ak.matrix_figure(a.S_prime, f"S′ (harmonized weights), missing={missing}", zmin=0, zmax=1, colorscale="Blues")
c2.plotly_chart(fig_sp, key="Sp")
diag = np.diag(a.S_prime)
bar = go.Figure(go.Bar(x=list(MODALITIES), y=np.where(np.isfinite(diag), diag, 0.0),
                       text=["absent" if not np.isfinite(v) else f"{v:.3f}" for v in diag], textposition="outside",
                       marker_color=[ak.GREY if not np.isfinite(v) else "#1f77b4" for v in diag]))
bar.update_layout(title="Diagonal of S′: weight of each modality's masked task", height=300,
                  yaxis_title="S′ᵢᵢ", margin=dict(l=10, r=10, t=40, b=10))
st.plotly_chart(bar, key="diag")

data = {"product": name, "missing": missing, "modalities": list(MODALITIES), "present": a.present.tolist(),
        "S": ak.matrix_json(a.S), "S_prime": ak.matrix_json(a.S_prime)}
if compare_zero:
    other = ak.analysis(ex, entry, "zero" if missing == "mask" else "mask")
    st.subheader("mask vs zero imputation")
    st.caption("Under zero imputation an absent modality still has a pooled feature (computed from zero tokens), so it "
               "gets a row in S and takes softmax weight from the real modalities.")
    m_a, z_a = (a, other) if missing == "mask" else (other, a)
    z1, z2, z3 = st.columns(3)
    z1.plotly_chart(ak.matrix_figure(m_a.S, "S, missing=mask"), key="S_mask")
    z2.plotly_chart(ak.matrix_figure(z_a.S, "S, missing=zero"), key="S_zero")
    z3.plotly_chart(ak.matrix_figure(z_a.S_prime - m_a.S_prime, "S′(zero) − S′(mask)", colorscale="PiYG"), key="S_diff")
    data["S_zero"], data["S_mask"] = ak.matrix_json(z_a.S), ak.matrix_json(m_a.S)

others = [n for n in ak.products() if n != name]
if others:
    st.subheader("Side by side")
    cmp = st.selectbox("Compare with", others, key="compare")
    b = ak.analysis(ex, ak.products()[cmp], missing)
    d1, d2 = st.columns(2)
    d1.plotly_chart(ak.matrix_figure(a.S, f"S · {name}"), key="S_a")
    d2.plotly_chart(ak.matrix_figure(b.S, f"S · {cmp}"), key="S_b")
    d1.plotly_chart(ak.matrix_figure(a.S_prime, f"S′ · {name}", zmin=0, zmax=1, colorscale="Blues"), key="Sp_a")
    d2.plotly_chart(ak.matrix_figure(b.S_prime, f"S′ · {cmp}", zmin=0, zmax=1, colorscale="Blues"), key="Sp_b")
    data["compare"] = {"product": cmp, "S": ak.matrix_json(b.S), "S_prime": ak.matrix_json(b.S_prime)}
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
                        yaxis_title="S′", height=380, margin=dict(l=10, r=10, t=40, b=10))
    st.plotly_chart(fig_t, key="sp_traj")
    step = st.select_slider("Step", options=steps.tolist(), value=int(steps[-1]), key="sp_step")
    st.plotly_chart(ak.matrix_figure(sp[list(steps).index(step)], f"Batch-mean S′ at step {step}", 0, 1, colorscale="Blues"),
                    key="sp_at_step")
ak.downloads("modality_scores", data, fig_s)
