"""SCALE Explorer: the router and the Home page. Run with `streamlit run app.py`.

st.navigation lists Home first (so the sidebar says "Home", not "app") and then every script in pages/
(appkit.app_pages).
"""
from __future__ import annotations

import streamlit as st

import appkit as ak
from core.explore.gallery import choose_gallery, presence_code
from core.modalities import pattern

SCORES_PAGE = "pages/2_Modality_scores.py"
GALLERY_SIZE = 8


def _open_product(ex, s, cat, p, generated: bool) -> None:
    """The gallery's click: load the product, then show its modality scores."""
    with st.spinner(f"Loading {p.title or p.id}…"):
        entry = ak.load_catalog_product(ex, s, cat, p, generated)
    if entry is None:
        st.session_state["home_error"] = (f"{p.id}: none of its files could be read. Fix: check the manifest's "
                                          "paths. " + ak.public(" ".join(ex.decode(p).errors.values())))
        return
    st.switch_page(SCORES_PAGE)


def gallery(s, ex, cat, generated: bool) -> None:
    prods, _ = ak.products_of(s)
    picks = choose_gallery(prods, cat.ids, GALLERY_SIZE)
    st.subheader("Try a product")
    if not picks:
        st.info("No catalog product outside the training split has an image, so there is no gallery. "
                "Fix: upload a product on **Upload and inspect**.")
        return
    st.caption("Curated by a rule (core.explore.gallery): one held-out (val) catalog product per broad category, the most "
               "complete first. One click loads it and opens its modality scores. Codes: T text, B table, "
               "I image, V video, A audio; - = absent.")
    per_row = 4
    for r in range(0, len(picks), per_row):
        cols = st.columns(per_row)
        for c, p in zip(cols, picks[r: r + per_row]):
            with c.container(border=True):
                try:
                    st.image(p.images[0], width="stretch")
                except Exception:  # noqa: BLE001 - a broken thumbnail must not hide the product
                    ak.log.warning("gallery thumbnail %s unreadable", p.images[0], exc_info=True)
                    st.caption("(thumbnail unreadable)")
                st.markdown(f"**{(p.title or p.id)[:48]}**")
                st.caption(f"{p.category or 'no category'} · `{presence_code(p)}`")
                if st.button("Open", key=f"gal_{p.id}", type="primary", width="stretch"):
                    _open_product(ex, s, cat, p, generated)


def home() -> None:
    s = ak.page("SCALE Explorer",
                "A tour of one trained SCALE model (self-harmonized contrastive learning over text, table, image, "
                "video and audio of e-commerce products): pick a product below (or upload one), see how the model "
                "scores its modalities against each other, what it predicts for masked parts, where the product "
                "lands among the catalog, which modality drives its retrieval, and how training went.", tab="Home")
    if "home_error" in st.session_state:
        st.error(st.session_state.pop("home_error"))
    problem = ak.checkpoint_problem(s.ckpt_dir)
    man, generated = ak.examples_manifest(s)
    if problem:
        st.error(f"**No model.** {problem}\n\n{ak.how_to_make_checkpoint()}")
    else:
        ex = ak.require_explorer(s)
        cat, built = ak.require_catalog(s, ex)
        if generated:
            st.warning("**Examples: generated.** The shop3k manifest was not found, so the example products are "
                       "synthetic shapes with tones (core.data.synth), not real products.")
        gallery(s, ex, cat, generated)
        cfg = ex.model.cfg
        n_params = sum(p.numel() for p in ex.model.parameters()) / 1e6
        cats = sorted(set(cat.categories.tolist()) - {""})
        c1, c2, c3 = st.columns(3)
        c1.success(f"**Model** `{s.ckpt_dir.name}` on {ex.device.type.upper()}\n\n"
                   f"hidden {cfg.hidden}, JCT {cfg.jct_layers} layer(s), {n_params:.1f} M parameters, "
                   f"missing = `{cfg.missing}`, harmonize = `{cfg.harmonize}`")
        c2.success(f"**Catalog** {len(cat):,} products, {len(cats)} categories"
                   + (" (embedded from the examples now)" if built else f"\n\n`{ak.label(s.catalog_path)}`"))
        if not generated:
            c3.info(f"**Examples** from `{ak.label(man)}` (titles and thumbnails come from it).")
    st.page_link("pages/1_Upload_and_inspect.py", label="Or upload your own product: any subset of the five modalities",
                 icon=":material/upload:")
    prods = ak.products()
    if prods:
        st.subheader("Products in this session")
        st.dataframe([{"name": n, "id": e["product"].id, "present": pattern(list(e["decoded"].present().values())),
                       "generated": e["generated"], "problems": "; ".join(e["errors"].values())}
                      for n, e in prods.items()], hide_index=True, width="stretch")
    if not problem and (s.ckpt_dir / "card.md").is_file():
        with st.expander("Model card (card.md)"):
            st.markdown((s.ckpt_dir / "card.md").read_text(encoding="utf-8", errors="replace"))
    ak.downloads("session", ak.session_record(s, man, generated, prods))


def main() -> None:
    st.navigation(ak.app_pages(home)).run()


main()
