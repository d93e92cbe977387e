"""Masked prediction: the pretext tasks (MLM, MEM, MRP, MFP, MAM) run on the current product."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: pages import appkit and core

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import appkit as ak

s = ak.page("Masked prediction",
            "Hide parts of the product and let the model fill them in from everything else (its own modality and "
            "the other four, through the joint co-transformer). Text tokens and table entities get top-5 word "
            "pieces with probabilities next to the truth; image regions, video frames and audio patches get the "
            "mean squared error of their reconstructed backbone feature (lower is better).")
ex = ak.require_explorer(s)
name, entry = ak.current()
feats, d = entry["features"], entry["decoded"]
opts = ex.maskable(feats)

c1, c2, c3 = st.columns([2, 2, 1])
mode = c1.radio("What to mask", ["Choose", "Draw 15%", "Predict one modality from the others"], key="mp_mode")
seed = c3.number_input("Seed", 0, 10_000, 0, key="mp_seed")
text_pos = table_ents = None
drop = None
if mode == "Choose":
    if "text" in opts:
        text_pos = c1.multiselect("Text tokens to mask", [i for i, _ in opts["text"]], key="mp_text",
                                  format_func=lambda i: f"{i}: {dict(opts['text'])[i]}",
                                  default=[i for i, _ in opts["text"][:2]])
    if "table" in opts:
        table_ents = c2.multiselect("Table entities to mask (their value)", [e for e, _, _ in opts["table"]],
                                    key="mp_table", format_func=lambda e: f"{opts['table'][e][1]} : {opts['table'][e][2]}",
                                    default=[e for e, _, _ in opts["table"][:1]])
    st.caption("Image regions, video frames and audio patches: 15% of them are drawn with the seed.")
elif mode == "Predict one modality from the others":
    choices = [m for m in ("text", "table", "image", "video", "audio") if m in opts]
    drop = c2.selectbox("Modality to predict", choices, key="mp_drop")
    st.caption(f"Every input of **{drop}** is masked ([MASK] ids or zero features); the model sees it only "
               "through the other modalities. Each item is scored against its original.")

res = ex.masked_prediction(feats, text_positions=text_pos, table_entities=table_ents, prob=0.15, seed=int(seed),
                           drop_modality=drop)
rows = res.rows()

st.subheader("Text and table: top-5 predictions")
if res.tokens:
    tdf = pd.DataFrame([r for r in rows if "truth" in r])
    acc = tdf["correct"].mean()
    st.caption(f"{len(tdf)} masked word pieces, top-1 accuracy {acc:.0%}")
    st.dataframe(tdf[["modality", "position", "truth", "prediction", "probability", "top5", "correct"]],
                 hide_index=True, width="stretch",
                 column_config={"probability": st.column_config.ProgressColumn("p(top-1)", min_value=0.0, max_value=1.0, format="%.3f")})
else:
    st.caption("No text or table token is masked (none chosen, none drawn, or the product has neither).")

fig = None
cols = st.columns(2)
with cols[0]:
    st.subheader("Image regions")
    if "image" in res.item_error:
        err, msk = res.item_error["image"], res.item_masked["image"]
        grid = int(round(np.sqrt(len(err) - 1)))
        fig = ak.region_grid_figure(d.images[0], err[1:], msk[1:], grid=grid,
                                    title=f"Reconstruction MSE of {int(msk[1:].sum())} masked regions")
        st.plotly_chart(fig, key="mp_img")
        if msk[0]:
            st.caption(f"Global token MSE: {err[0]:.3f}")
    else:
        st.caption("absent")
with cols[1]:
    st.subheader("Video frames")
    if "video" in res.item_error and d.video is not None:
        err, msk = res.item_error["video"], res.item_masked["video"]
        fv = go.Figure(go.Bar(x=[f"{t:.1f}s" for t in d.video.times], y=np.where(msk, err, 0.0),
                              marker_color=np.where(msk, "#d62728", ak.GREY),
                              text=[f"{e:.3f}" if m else "visible" for e, m in zip(err, msk)], textposition="outside"))
        fv.update_layout(title="Reconstruction MSE per masked frame", height=260, margin=dict(l=10, r=10, t=40, b=10))
        st.plotly_chart(fv, key="mp_vid")
        st.image(list(d.video.frames), width=72,
                 caption=[f"masked {e:.2f}" if m else "visible" for e, m in zip(err, msk)])
    else:
        st.caption("absent")
st.subheader("Audio patches")
if "audio" in res.item_error and d.audio is not None:
    mel = ex.featurizer.audio.log_mel(d.audio)
    st.plotly_chart(ak.spectrogram_figure(mel, ex.featurizer.cfg.mel_frames_per_patch, res.item_error["audio"],
                                          res.item_masked["audio"], "Masked time patches (red band, darker = larger MSE)"),
                    key="mp_mel")
else:
    st.caption("absent")
if drop in res.item_error:
    e = res.item_error[drop]
    st.metric(f"Mean reconstruction MSE of {drop} from the other modalities", f"{float(np.mean(e)):.4f}")
ak.downloads("masked_prediction", pd.DataFrame(rows), fig)
