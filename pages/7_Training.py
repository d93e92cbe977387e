"""Training: loss curves, learning rate, S' trajectory and the checkpoint's evaluation."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: pages import appkit and core

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import appkit as ak
from core.modalities import MODALITIES

s = ak.page("Training",
            "How the checkpoint was trained: each pretext task's loss and the contrastive loss per step, the learning "
            "rate schedule, the batch-mean S′ weights over steps, and the evaluation the checkpoint ships with "
            "(metrics.json, card.md).")
log = ak.train_log(s)  # the chosen checkpoint's own log only: there is no free path box
fig = None
if log is None or len(log.steps) == 0:
    st.error(f"{ak.label(s.ckpt_dir)}: no training log found (train_metrics.jsonl or metrics.jsonl). Fix: copy the "
             "run's metrics.jsonl (written by python -m core.train) beside the model as train_metrics.jsonl.")
else:
    st.caption(f"{len(log.steps):,} steps from `{ak.label(log.path)}`")
    tasks = [k for k in log.losses if not k.startswith("cl_")]
    smooth = (st.slider("Smoothing window (steps)", 1, min(200, len(log.steps) // 2), 1, key="tr_smooth")
              if len(log.steps) >= 4 else 1)
    fig = go.Figure()
    for k in tasks:
        y = pd.Series(log.losses[k]).rolling(smooth, min_periods=1).mean()
        fig.add_trace(go.Scatter(x=log.steps, y=y, mode="lines", name=k, line=dict(width=3 if k == "total" else 1.5)))
    fig.update_layout(title="Loss per task", xaxis_title="step", yaxis_title="loss", yaxis_type="log", height=420,
                      margin=dict(l=10, r=10, t=40, b=10))
    st.plotly_chart(fig, key="tr_loss")
    pairs = [k for k in log.losses if k.startswith("cl_")]
    c1, c2 = st.columns(2)
    if pairs:
        fp = go.Figure([go.Scatter(x=log.steps, y=pd.Series(log.losses[k]).rolling(smooth, min_periods=1).mean(),
                                   mode="lines", name=k[3:]) for k in pairs])
        fp.update_layout(title="Contrastive loss per modality pair (S′-weighted)", height=340, margin=dict(l=10, r=10, t=40, b=10))
        c1.plotly_chart(fp, key="tr_pairs")
    flr = go.Figure(go.Scatter(x=log.steps, y=log.lr, mode="lines"))
    flr.update_layout(title="Learning rate", xaxis_title="step", height=340, margin=dict(l=10, r=10, t=40, b=10))
    c2.plotly_chart(flr, key="tr_lr")
    if log.s_prime is not None:
        fs = go.Figure()
        for i, m in enumerate(MODALITIES):
            fs.add_trace(go.Scatter(x=log.steps, y=log.s_prime[:, i, i], mode="lines", name=f"{m} (task weight)"))
        fs.update_layout(title="Batch-mean S′ diagonal over steps", height=340, margin=dict(l=10, r=10, t=40, b=10))
        st.plotly_chart(fs, key="tr_sp")
        st.plotly_chart(ak.matrix_figure(np.nanmean(log.s_prime[-max(1, len(log.steps) // 10):], axis=0),
                                         "Batch-mean S′ over the last 10% of steps", 0, 1, colorscale="Blues"), key="tr_sp_last")
    if log.val:
        st.subheader("Validation lines")
        st.dataframe(pd.json_normalize(log.val), hide_index=True, width="stretch")

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
    st.info(f"{ak.label(mpath)} not found: the evaluator writes it (python -m core.evaluate).")
if cpath.is_file():
    with st.expander("Model card (card.md)", expanded=True):
        st.markdown(cpath.read_text(encoding="utf-8", errors="replace"))
ak.downloads("training", log.frame() if log is not None and len(log.steps) else metrics, fig)
