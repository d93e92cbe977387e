"""SCALE Explorer: home page. Run with `streamlit run app.py` (pages/ holds the other pages)."""
from __future__ import annotations


import streamlit as st

import appkit as ak
from core.modalities import pattern

st.set_page_config(page_title="SCALE Explorer", page_icon=":material/storefront:", layout="wide")
s = ak.sidebar()

st.title("SCALE Explorer")
ak.explain("A tour of one trained SCALE model (self-harmonized contrastive learning over text, table, image, "
           "video and audio of e-commerce products): upload a product, see how the model scores its "
           "modalities against each other, what it predicts for masked parts, where the product lands among "
           "the catalog, which modality drives its retrieval, and how training went.")

problem = ak.checkpoint_problem(s.ckpt_dir)
c1, c2, c3 = st.columns(3)
if problem:
    c1.error(f"**No model.** {problem}\n\n{ak.how_to_make_checkpoint()}")
else:
    ex = ak.require_explorer(s)
    cfg = ex.model.cfg
    n_params = sum(p.numel() for p in ex.model.parameters()) / 1e6
    c1.success(f"**Model** `{s.ckpt_dir.name}` on {ex.device.type.upper()}\n\n"
               f"hidden {cfg.hidden}, JCT {cfg.jct_layers} layer(s), {n_params:.1f} M parameters, "
               f"missing = `{cfg.missing}`, harmonize = `{cfg.harmonize}`")
    cat, built = ak.require_catalog(s, ex)
    cats = sorted(set(cat.categories.tolist()) - {""})
    c2.success(f"**Catalog** {len(cat):,} products, {len(cats)} categories"
               + (" (embedded from the examples now)" if built else f"\n\n`{ak.label(s.catalog_path)}`"))
man, generated = ak.examples_manifest(s)
if generated:
    c3.warning("**Examples: generated.** The shop3k manifest was not found, so the example products are "
               "synthetic shapes with tones (core.synth), not real products.")
else:
    c3.info(f"**Examples** from `{ak.label(man)}` (titles and thumbnails come from it).")

st.subheader("Pages")
st.page_link("pages/1_Upload_and_inspect.py", label="1 · Upload and inspect: any subset of the five modalities, decoded", icon=":material/upload:")
st.page_link("pages/2_Modality_scores.py", label="2 · Modality scores: the 5×5 S and S′ matrices", icon=":material/grid_on:")
st.page_link("pages/3_Masked_prediction.py", label="3 · Masked prediction: what the model fills in", icon=":material/theater_comedy:")
st.page_link("pages/4_Embedding_map.py", label="4 · Embedding map: UMAP / PCA of the catalog", icon=":material/map:")
st.page_link("pages/5_Modality_contributions.py", label="5 · Modality contributions: Shapley, leave-one-out, attention", icon=":material/balance:")
st.page_link("pages/6_Retrieval.py", label="6 · Retrieval: query with some modalities, search the catalog", icon=":material/search:")
st.page_link("pages/7_Training.py", label="7 · Training: losses, learning rate, S′ over steps, evaluation", icon=":material/monitoring:")

prods = ak.products()
st.subheader("Products in this session")
if prods:
    st.dataframe([{"name": n, "id": e["product"].id, "present": pattern(list(e["decoded"].present().values())),
                   "generated": e["generated"], "problems": "; ".join(e["errors"].values())} for n, e in prods.items()],
                 hide_index=True, width="stretch")
else:
    st.write("None yet: start on **Upload and inspect**.")
if not problem and (s.ckpt_dir / "card.md").is_file():
    with st.expander("Model card (card.md)"):
        st.markdown((s.ckpt_dir / "card.md").read_text(encoding="utf-8", errors="replace"))
ak.downloads("session", ak.session_record(s, man, generated, prods))
