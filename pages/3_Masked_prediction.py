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
from core.explore.explorer import content_positions, value_entities

s = ak.page("Masked prediction",
            "Hide parts of the product and let the model fill them in from everything else (its own modality and "
            "the other four, through the joint co-transformer). Text tokens and table entities get top-5 word "
            "pieces with probabilities next to the truth; image regions, video frames and audio patches get the "
            "mean squared error of their reconstructed backbone feature (lower is better).")
ex = ak.require_explorer(s)
cat, _ = ak.require_catalog(s, ex)
name, entry = ak.current()
feats, d = entry["features"], entry["decoded"]
opts = ex.maskable(feats)
ss = st.session_state

c1, c2, c3 = st.columns([2, 2, 1])
MODES = ["Choose", "Draw 15%", "Predict one modality from the others"]
mode = c1.radio("What to mask", MODES, key="mp_mode")
seed = c3.number_input("Seed", 0, 10_000, 0, key="mp_seed")
text_pos = table_ents = None
drop = None
prob = 0.15
if mode == "Choose":
    # per product (positions differ); the defaults are content words and word values, not the first pieces
    tkey, bkey = f"mp_text:{name}", f"mp_table:{name}"
    if "text" in opts:
        ss.setdefault(tkey, content_positions(opts["text"]))
        text_pos = c1.multiselect("Text tokens to mask", [i for i, _ in opts["text"]], key=tkey,
                                  format_func=lambda i: f"{i}: {dict(opts['text'])[i]}")
    if "table" in opts:
        ss.setdefault(bkey, value_entities(opts["table"]))
        table_ents = c2.multiselect("Table entities to mask (their value)", [e for e, _, _ in opts["table"]], key=bkey,
                                    format_func=lambda e: f"{opts['table'][e][1]} : {opts['table'][e][2]}")
    st.caption("Image regions, video frames and audio patches: 15% of them are drawn with the seed.")
elif mode == "Draw 15%":
    st.caption("15% of every modality's tokens, entities, regions, frames and patches are drawn with the seed.")
else:
    choices = [m for m in ("text", "table", "image", "video", "audio") if m in opts]
    drop = c2.selectbox("Modality to predict", choices, key="mp_drop")
    prob = 0.0  # nothing else is hidden: the other modalities are given whole
    st.info(f"Masked: **every** input of **{drop}** ([MASK] ids or zeroed features). Nothing of the other "
            f"modalities ({', '.join(m for m in choices if m != drop) or 'none'}) is masked: the model sees them whole "
            f"and must rebuild {drop} from them alone.")

res = ex.masked_prediction(feats, text_positions=text_pos, table_entities=table_ents, prob=prob, seed=int(seed),
                           drop_modality=drop)
rows = res.rows()
base = ak.word_baselines(ex, str(ak.examples_manifest(s)[0]), ak._mtime(ak.examples_manifest(s)[0]),
                         tuple(str(i) for i in cat.ids))
refs = ak.reference_errors(ex, s, cat, ak.catalog_key(s, cat))


def filled(tokens: list[str], preds: dict[int, "object"]) -> str:
    """The word pieces joined back into words, each masked one replaced by the model's guess:
    green when right, red (with the truth struck through beside it) when wrong."""
    out = []
    for i, t in enumerate(tokens):
        if i in preds:
            p = preds[i]
            guess = (p.top[0][0] if p.top else "?").replace("##", "")
            piece = f":green[**{guess}**]" if p.correct else f":red[**{guess}**] ~~{p.truth.replace('##', '')}~~"
        else:
            piece = t.replace("##", "")
        glue = t.startswith("##") and out
        out.append(("" if glue else " ") + piece)
    return "".join(out).strip()


st.subheader("Text and table: the blanks filled in")
if res.tokens:
    by = {m: {t.position: t for t in res.tokens if t.modality == m} for m in ("text", "table")}
    if by["text"]:
        tok = ex.tokenizer.convert_ids_to_tokens(np.asarray(feats["text.ids"]).tolist())
        keep = [i for i, x in enumerate(np.asarray(feats["text.ids"]).tolist()) if x not in set(ex.tokenizer.all_special_ids)]
        words = [tok[i] for i in keep]
        st.markdown("**Text** · " + filled(words, {keep.index(i): p for i, p in by["text"].items() if i in keep}))
    if by["table"]:
        ids = np.asarray(feats["table.ids"]).tolist()
        lines = []
        for e, (ks, ke, vs, ve) in enumerate(np.asarray(feats["table.spans"]).reshape(-1, 4).tolist()):
            hit = {i - vs: by["table"][i] for i in range(vs, ve) if i in by["table"]}
            khit = {i - ks: by["table"][i] for i in range(ks, ke) if i in by["table"]}
            if hit or khit:
                key = filled(ex.tokenizer.convert_ids_to_tokens(ids[ks:ke]), khit)
                val = filled(ex.tokenizer.convert_ids_to_tokens(ids[vs:ve]), hit)
                lines.append(f"- {key} : {val}")
        st.markdown("**Table** (masked entries)\n" + "\n".join(lines))
    tdf = pd.DataFrame([r for r in rows if "truth" in r])
    tdf["correct"] = np.where(tdf["correct"], "✅ right", "❌ wrong")
    tdf["baseline"] = [base.get(m, "") for m in tdf["modality"]]
    b_ok = (tdf["baseline"] == tdf["truth"]).to_numpy()
    acc = (tdf["correct"] == "✅ right").mean()
    m1, m2 = st.columns(2)
    m1.metric("Model: top-1 right", f"{acc:.0%}", help=f"{len(tdf)} masked word pieces")
    m2.metric("Baseline: always the catalog's most frequent word", f"{b_ok.mean():.0%}",
              help=f"text: always '{base.get('text', '')}', table: always '{base.get('table', '')}'")
    st.dataframe(tdf[["modality", "position", "truth", "prediction", "correct", "probability", "baseline", "top5"]],
                 hide_index=True, width="stretch",
                 column_config={"probability": st.column_config.ProgressColumn("p(top-1)", min_value=0.0, max_value=1.0, format="%.3f")})
else:
    st.caption("No text or table token is masked (none chosen, none drawn, or the product has neither).")


def scale_of(m: str, err: np.ndarray, msk: np.ndarray) -> float:
    """Fixed colour / axis top: twice the catalog's median error, so runs and products compare."""
    ref = refs.get(m)
    return 2 * ref if ref else float(np.max(err[msk])) if msk.any() else 1.0


if refs:
    st.caption("Error scales are fixed at twice the catalog's median reconstruction MSE of each modality "
               "(the reference, measured once on catalog products): " + ", ".join(f"{m} {v:.3g}" for m, v in refs.items()))
fig = None
cols = st.columns(2)
with cols[0]:
    st.subheader("Image regions")
    if "image" in res.item_error and res.item_masked["image"][1:].any():
        err, msk = res.item_error["image"], res.item_masked["image"]
        grid = int(round(np.sqrt(len(err) - 1)))
        fig = ak.region_grid_figure(d.images[0], err[1:], msk[1:], grid=grid, zmax=scale_of("image", err, msk),
                                    title=f"Reconstruction MSE of {int(msk[1:].sum())} masked regions")
        st.plotly_chart(fig, key="mp_img")
        if msk[0]:
            st.caption(f"Global token MSE: {err[0]:.3f}")
    else:
        st.caption("absent" if "image" not in res.item_error else "no image region masked")
with cols[1]:
    st.subheader("Video frames")
    if "video" in res.item_error and d.video is not None and res.item_masked["video"].any():
        err, msk = res.item_error["video"], res.item_masked["video"]
        x = [f"{t:.1f}s" for t in d.video.times]
        fv = go.Figure(go.Bar(x=[x[i] for i in np.flatnonzero(msk)], y=err[msk], marker_color="#d62728",
                              text=[f"{e:.3f}" for e in err[msk]], textposition="outside", name="masked frame"))
        if refs.get("video"):
            fv.add_hline(y=refs["video"], line_dash="dash", annotation_text="catalog median", line_color="#555")
        fv.update_layout(title="Reconstruction MSE per masked frame", height=260, margin=dict(l=10, r=10, t=40, b=10),
                         xaxis_title="frame time", yaxis_title="reconstruction MSE",
                         yaxis_range=[0, max(scale_of("video", err, msk), float(err[msk].max()) * 1.15)])
        st.plotly_chart(fv, key="mp_vid")
        st.image(list(d.video.frames), width=72,
                 caption=[f"masked {e:.2f}" if m else "visible" for e, m in zip(err, msk)])
    else:
        st.caption("absent" if "video" not in res.item_error else "no video frame masked")
st.subheader("Audio patches")
if "audio" in res.item_error and d.audio is not None and res.item_masked["audio"].any():
    mel = ex.featurizer.audio.log_mel(d.audio)
    st.plotly_chart(ak.spectrogram_figure(mel, ex.featurizer.audio.frames_per_item, res.item_error["audio"],
                                          res.item_masked["audio"], "Masked time patches (red band, darker = larger MSE)",
                                          emax=scale_of("audio", res.item_error["audio"], res.item_masked["audio"])),
                    key="mp_mel")
    if refs.get("audio"):
        st.caption(f"Catalog median audio-patch MSE: {refs['audio']:.3g}")
else:
    st.caption("absent" if "audio" not in res.item_error else "no audio patch masked")
if drop in res.item_error:
    e = res.item_error[drop]
    ref = refs.get(drop)
    st.metric(f"Mean reconstruction MSE of {drop} from the other modalities", f"{float(np.mean(e)):.4f}",
              delta=(f"{float(np.mean(e)) - ref:+.4f} vs the catalog median of masked items" if ref else None),
              delta_color="inverse")
ak.downloads("masked_prediction", pd.DataFrame(rows), fig)
