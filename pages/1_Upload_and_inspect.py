"""Upload a product (any subset of the five modalities) or pick an example, and see what was decoded."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: pages import appkit and core

import numpy as np
import pandas as pd
import streamlit as st

import appkit as ak

s = ak.page("Upload and inspect",
            "Give the model a product: any subset of text, table, image(s), video and audio. Below, each modality "
            "is shown the way the model receives it: the image's 7×7 region grid, the word pieces, the table's "
            "key/value entities, the sampled video frames and the waveform with its log-mel spectrogram.")
ex = ak.require_explorer(s)
# Per-type filters: the browser offers only these, and Streamlit refuses other names server-side too.
IMAGE_TYPES = ["jpg", "jpeg", "png", "webp"]
VIDEO_TYPES = ["mp4", "webm", "mov", "avi"]
AUDIO_TYPES = ["wav", "flac", "ogg", "mp3", "m4a"]
TABLE_TYPES = ["csv", "tsv", "json", "txt"]
cap = st.get_option("server.maxUploadSize")  # MB per file, from .streamlit/config.toml

up_tab, ex_tab = st.tabs(["Upload files", "Example product"])
with up_tab:
    c1, c2 = st.columns(2)
    with c1:
        title = st.text_input("Title", key="up_title")
        description = st.text_area("Description", key="up_description", height=90)
        st.markdown("**Table** (key / value pairs; or upload a CSV / JSON file below, which takes precedence)")
        grid = st.data_editor(pd.DataFrame({"key": pd.Series(dtype=str), "value": pd.Series(dtype=str)}),
                              num_rows="dynamic", key="up_table_grid", width="stretch")
        table_file = st.file_uploader("Table file (CSV key,value / JSON object)", type=TABLE_TYPES,
                                      key="up_table_file", help=f"CSV / TSV / JSON / TXT, up to {cap} MB")
    with c2:
        images = st.file_uploader("Image(s)", type=IMAGE_TYPES, accept_multiple_files=True, key="up_images",
                                  help=f"JPEG / PNG / WebP, up to {cap} MB each; the first one is encoded, the others are shown")
        video = st.file_uploader("Video", type=VIDEO_TYPES, key="up_video", help=f"MP4 / WebM / MOV / AVI, up to {cap} MB")
        st.session_state.setdefault("up_use_soundtrack", True)  # default once; kept across pages after that
        use_sound = st.checkbox("Use the video's soundtrack as audio (when no audio file is given)",
                                key="up_use_soundtrack")
        audio = st.file_uploader("Audio", type=AUDIO_TYPES, key="up_audio", help=f"WAV / FLAC / OGG / MP3 / M4A, up to {cap} MB")
    if st.button("Analyze this product", type="primary", key="up_submit"):
        if table_file is not None:
            table, table_name = table_file.getvalue(), table_file.name
        else:
            rows = grid.dropna(how="all") if isinstance(grid, pd.DataFrame) else pd.DataFrame(columns=["key", "value"])
            table = {str(k).strip(): str(v).strip() for k, v in zip(rows.get("key", []), rows.get("value", []))
                     if isinstance(k, str) and k.strip() and isinstance(v, str) and v.strip()}
            table_name = "table grid"
        product, decoded, errors = ex.product_from_inputs(
            title, description, table or None, [(f.name, f.getvalue()) for f in images or []],
            (video.name, video.getvalue()) if video else None, (audio.name, audio.getvalue()) if audio else None,
            use_sound, table_name=table_name, upload_root=ak.upload_folder())
        entry = ak.add_product(ex, title.strip() or f"upload {product.id[-8:]}", product, decoded, errors,
                               notes=getattr(decoded, "notes", None))
        if entry is None:
            # the errors are this attempt's: shown alone, never above the previous product's details
            st.error("Nothing usable was given. Fix: add a title, a table row or a readable image / video / audio file.")
            for m, msg in errors.items():
                st.error(f"**{m}** left out: {ak.public(msg)}")
            st.stop()
        else:  # rerun so the sidebar's product list includes it; the message survives in session state
            st.session_state["flash"] = f"Analyzed **{st.session_state['current']}**."
            st.rerun()

with ex_tab:
    prods, generated = ak.products_of(s)
    if generated:
        st.warning("These examples are **generated** (core.data.synth: coloured shapes, spinning-shape videos and tones), "
                   "not real products, because the shop3k manifest was not found.")
    labels = [f"{p.title or p.id} · {p.category or 'no category'} · {p.id}" for p in prods]
    pick = st.selectbox("Example", range(len(prods)), format_func=lambda i: labels[i], key="example_pick")
    if st.button("Load example", key="example_load") and prods:
        p = prods[pick]
        entry = ak.load_catalog_product(ex, s, None, p, generated)
        if entry is None:
            st.error(f"{p.id}: none of its files could be read. Fix: check the manifest's paths. "
                     + ak.public(" ".join(ex.decode(p).errors.values())))
            st.stop()
        else:
            st.session_state["flash"] = f"Loaded example **{st.session_state['current']}**."
            st.rerun()

name, entry = ak.current(required=False)
flash = st.session_state.pop("flash", None)
if entry is None:
    st.info("No product yet: upload files or load an example above (or pick one in the Home page's gallery).")
    st.stop()

d, feats = entry["decoded"], entry["features"]
# problems first: a success banner never sits above a red error
for m, msg in entry["errors"].items():
    st.error(f"**{m}** left out: {ak.public(msg)}")
for m, msg in entry.get("notes", {}).items():
    st.warning(f"**{m}**: {ak.public(msg)}")
if flash:
    (st.info if entry["errors"] else st.success)(flash + (f" {len(entry['errors'])} modality(ies) left out, see above."
                                                          if entry["errors"] else ""))
st.header(name + (" · generated example" if entry["generated"] else ""))
st.markdown("Present: " + ak.present_badges(d.present()))

cat, _ = ak.require_catalog(s, ex)
match = ak.catalog_match(ex, s, cat, entry)
if match.duplicate_id is not None and match.duplicate_id == entry["product"].id:
    st.caption(f"A catalog product (`{match.duplicate_id}`): it is left out of its own retrieval, AP and contributions.")
elif match.duplicate_id is not None:
    st.warning(f"This product is already in the catalog as `{match.duplicate_id}` (fused cosine "
               f"{match.duplicate_cosine:.4f}). It is left out of its own retrieval, AP and contributions, so it is "
               "never its own rank-1 match.")
cats = sorted(set(cat.categories.tolist()) - {""})
product = entry["product"]
if cats:
    opts = cats if (product.category or "") in cats or not product.category else [product.category, *cats]
    inferred = entry.get("category_source") == "inferred"
    vote_txt = ", ".join(f"{c} ({n})" for c, n in match.votes[:3])
    chosen = st.selectbox(
        "Category" + (" (inferred from the nearest catalog products; change it if it is wrong)" if inferred else ""),
        opts, index=opts.index(product.category) if product.category in opts else 0, key=f"up_category:{name}",
        help=f"Used for hit marks and AP on Retrieval and Contributions. Nearest 10 catalog products: {vote_txt}")
    if chosen != product.category:
        from dataclasses import replace

        entry["product"] = product = replace(product, category=chosen)
        entry["category_source"] = "user"
    if inferred:
        st.caption(f"Inferred category **{product.category}**: nearest 10 catalog products by fused cosine are {vote_txt}.")

summary = {"id": d.product.id, "present": d.present(), "errors": entry["errors"], "category": d.product.category}
fig = None
cols = st.columns(2)
with cols[0]:
    st.subheader("Image")
    if d.images:
        fig = ak.region_grid_figure(d.images[0], title="What the backbone sees: center crop, 7×7 regions (+1 global token)")
        st.plotly_chart(fig, key="img_grid")
        if len(d.images) > 1:
            st.image(d.images[1:], width=100, caption=[f"image {i + 2} (shown, not encoded)" for i in range(len(d.images) - 1)])
        summary["image_tokens"] = list(feats["image.tokens"].shape)
    else:
        st.caption("absent")
    st.subheader("Text tokens")
    if "text.ids" in feats:
        toks = ex.tokenizer.convert_ids_to_tokens(np.asarray(feats["text.ids"]).tolist())
        st.markdown(" ".join(f"`{t}`" for t in toks))
        st.caption(f"{len(toks)} word pieces (MiniLM / BERT uncased vocabulary, at most 64)")
        summary["text_tokens"] = toks
    else:
        st.caption("absent")
    st.subheader("Table entities")
    if "table.ids" in feats:
        ents = ex.maskable(feats)["table"]
        df = pd.DataFrame([{"entity": e, "key": k, "value": v} for e, k, v in ents])
        st.dataframe(df, hide_index=True, width="stretch")
        kept = len(ents)
        if d.table and kept < len(d.table):
            st.caption(f"{kept} of {len(d.table)} entries fit in the 64-token table; the rest are dropped.")
        summary["table_entities"] = df.to_dict("records")
    else:
        st.caption("absent")
with cols[1]:
    st.subheader("Video frames")
    if d.video is not None:
        st.image(list(d.video.frames), width=96, caption=[f"{t:.1f} s" for t in d.video.times])
        st.caption(f"{len(d.video.frames)} frames sampled from {d.video.duration:.1f} s at about 1 fps (≤ 12)")
        summary["video_frame_times"] = d.video.times.tolist()
    else:
        st.caption("absent")
    st.subheader("Audio")
    if d.audio is not None:
        st.caption(f"{len(d.audio) / 16000:.1f} s, from the {'video soundtrack' if d.audio_source == 'video' else 'audio file'}")
        st.plotly_chart(ak.waveform_figure(d.audio), key="wave")
        mel = ex.featurizer.audio.log_mel(d.audio)
        st.plotly_chart(ak.spectrogram_figure(mel, ex.featurizer.audio.frames_per_item), key="mel")
        if ex.featurizer.cfg.audio == "logmel":
            st.caption(f"{len(feats['audio.patches'])} time patches of {ex.featurizer.cfg.mel_frames_per_patch} frames × 80 mel bins")
        else:
            st.caption(f"{len(feats['audio.patches'])} items of 0.1 s from the {ex.featurizer.cfg.audio} encoder "
                       f"({feats['audio.patches'].shape[1]}-d); its input log-mel is shown")
        summary["audio_seconds"] = len(d.audio) / 16000
    else:
        st.caption("absent")
ak.downloads("product", summary, fig)
