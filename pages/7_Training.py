"""Training: loss curves with validation, learning rate, S' trajectory and the checkpoint's evaluation."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: pages import appkit and core

import json

import numpy as np
import pandas as pd
import plotly.colors as pc
import plotly.graph_objects as go
import streamlit as st

import appkit as ak
from core.explore.training_log import default_smoothing, loss_curve
from core.modalities import MODALITIES

s = ak.page("Training",
            "How the checkpoint was trained: each pretext task's loss and the contrastive loss per step (lines) with "
            "the validation loss on the dev split after each epoch (diamonds), the learning rate schedule, the "
            "batch-mean S′ weights over steps, and the evaluation the checkpoint ships with (metrics.json, card.md). "
            "Batches that had none of a task's modality are left out of that task's curve (not drawn as 0).")
log = ak.train_log(s)  # the chosen checkpoint's own log only: there is no free path box
fig = None
PALETTE = pc.qualitative.Dark24
if log is None or len(log.steps) == 0:
    st.error(f"{ak.label(s.ckpt_dir)}: no training log found (train_metrics.jsonl or metrics.jsonl). Fix: copy the "
             "run's metrics.jsonl (written by python -m core.train) beside the model as train_metrics.jsonl.")
else:
    st.caption(f"{len(log.steps):,} steps from `{ak.label(log.path)}`"
               + (f", {len(log.val)} validation line(s)" if log.val else ""))
    tasks = [k for k in log.losses if not k.startswith("cl_")]
    if len(log.steps) >= 4:
        top = min(200, len(log.steps) // 2)
        st.session_state.setdefault("tr_smooth", min(default_smoothing(len(log.steps)), top))
        smooth = st.slider("Smoothing window (steps)", 1, top, key="tr_smooth",
                           help="trailing mean over this many steps; 1 = the raw per-batch values")
    else:
        smooth = 1
    colour = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(tasks)}
    fig = go.Figure()
    for k in tasks:
        fig.add_trace(go.Scatter(x=log.steps, y=loss_curve(log.losses[k], smooth), mode="lines", name=k, legendgroup=k,
                                 line=dict(width=3 if k == "total" else 1.5, color=colour[k])))
        vx = [v["step"] for v in log.val if k in v["val"] and v.get("step") is not None]
        vy = [v["val"][k] for v in log.val if k in v["val"] and v.get("step") is not None]
        if vx:
            fig.add_trace(go.Scatter(x=vx, y=vy, mode="markers", name=f"{k} (validation)", legendgroup=k, showlegend=False,
                                     marker=dict(symbol="diamond", size=10, color=colour[k], line=dict(width=1, color="black")),
                                     hovertemplate=f"{k} validation<br>step %{{x}}<br>loss %{{y:.3f}}<extra></extra>"))
    fig.update_layout(title="Loss per task", xaxis_title="training step", yaxis_title="loss (log scale)",
                      yaxis_type="log", height=420, margin=dict(l=10, r=10, t=40, b=10))
    st.plotly_chart(fig, key="tr_loss")
    if log.val:
        acc = [(v["step"], v["val"]["mAP@10"]) for v in log.val if "mAP@10" in v["val"] and v.get("step") is not None]
        if acc:
            st.caption("Validation mAP@10 per epoch: " + ", ".join(f"step {int(a)}: {b:.1f}" for a, b in acc))
    if log.fusion and log.fusion["weights"]:
        f = log.fusion
        text = "Fusion weights fitted on dev: " + ", ".join(f"{m} {w:g}" for m, w in f["weights"].items())
        if "mAP@10_equal" in f and "mAP@10_fitted" in f:
            text += (f". Dev mAP@10 {f['mAP@10_equal']:.1f} with equal weights, {f['mAP@10_fitted']:.1f} fitted, "
                     "scored on the products the weights were fitted on")
        if f["cross_fitted"]:
            text += ("; fitted on half of dev and scored on the other half: " + ", ".join(
                f"{k} ({v['vs']}) {v['diff']:+.2f}" for k, v in f["cross_fitted"].items()))
        st.caption(text + ".")
    pairs = [k for k in log.losses if k.startswith("cl_")]
    t_pairs, t_lr, t_sp, t_val = st.tabs(["Contrastive pairs", "Learning rate", "S′ over steps", "Validation lines"])
    with t_pairs:
        if pairs:
            fp = go.Figure([go.Scatter(x=log.steps, y=loss_curve(log.losses[k], smooth), mode="lines", name=k[3:])
                            for k in pairs])
            fp.update_layout(title="Contrastive loss per modality pair (S′-weighted)", height=340,
                             xaxis_title="training step", yaxis_title="contrastive loss",
                             margin=dict(l=10, r=10, t=40, b=10))
            st.plotly_chart(fp, key="tr_pairs")
        else:
            st.caption("The log has no per-pair contrastive losses.")
    with t_lr:
        flr = go.Figure(go.Scatter(x=log.steps, y=log.lr, mode="lines"))
        flr.update_layout(title="Learning rate", xaxis_title="training step", yaxis_title="learning rate", height=340,
                          margin=dict(l=10, r=10, t=40, b=10))
        st.plotly_chart(flr, key="tr_lr")
    with t_sp:
        if log.s_prime is not None:
            fs = go.Figure()
            for i, m in enumerate(MODALITIES):
                fs.add_trace(go.Scatter(x=log.steps, y=log.s_prime[:, i, i], mode="lines", name=f"{m} (task weight)"))
            fs.update_layout(title="Batch-mean S′ diagonal over steps", height=340, xaxis_title="training step",
                             yaxis_title="S′ diagonal", margin=dict(l=10, r=10, t=40, b=10))
            st.plotly_chart(fs, key="tr_sp")
            st.plotly_chart(ak.matrix_figure(np.nanmean(log.s_prime[-max(1, len(log.steps) // 10):], axis=0),
                                             "Batch-mean S′ over the last 10% of steps", 0, 1, colorscale="Blues"),
                            key="tr_sp_last")
        else:
            st.caption("The log has no S′ values.")
    with t_val:
        if log.val:
            st.dataframe(pd.json_normalize(log.val), hide_index=True, width="stretch")
        else:
            st.caption("The log has no validation lines.")

st.subheader("Evaluation")
mpath, cpath = s.ckpt_dir / "metrics.json", s.ckpt_dir / "card.md"
metrics = None
if mpath.is_file():
    try:
        metrics = json.loads(mpath.read_text())
        flat = pd.json_normalize(metrics, sep=" / ").T.rename(columns={0: "value"})
        st.dataframe(flat, width="stretch")
    except json.JSONDecodeError as e:
        st.error(f"{ak.label(mpath)}: not valid JSON ({e.msg}). Fix: re-run the evaluator.")
else:
    st.info(f"{ak.label(mpath)} not found: the evaluator writes it (python -m core.eval).")
if cpath.is_file():
    with st.expander("Model card (card.md)", expanded=False):
        st.markdown(cpath.read_text(encoding="utf-8", errors="replace"))
ak.downloads("training", log.frame() if log is not None and len(log.steps) else metrics, fig)
