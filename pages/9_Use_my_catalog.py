"""Use my catalog: embed a manifest found under the roots and make it this session's catalog on every page."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: pages import appkit and core

import pandas as pd
import streamlit as st

import appkit as ak
from core.errors import ScaleError
from core.explore import my_catalog as mc
from core.explore import roots as rt

s = ak.page("Use my catalog",
            "Pick a product manifest (one that `python -m core.data.records import --format shopify|woocommerce|"
            "magento|google-merchant` wrote, or any project manifest under the server's folders). The button "
            "extracts every product's features (kept on the server, so an interrupted run resumes where it "
            "stopped), embeds them with the current checkpoint and makes the result the catalog of every page, "
            "for this browser session only. Products that cannot be read are skipped and listed.")
ex = ak.require_explorer(s)
found = ak.manifests()
if not found:
    st.info("No manifest under the server's folders. Fix: import your shop's export with `python -m core.data.records "
            "import ... --out <folder>/manifest.jsonl` into a folder the administrator lists in SCALE_ROOTS.")
    st.stop()
ss = st.session_state
if ss.get("mc_manifest") not in found:
    ss["mc_manifest"] = ss.get("my_catalog") if ss.get("my_catalog") in found else found[0]
pick = st.selectbox("Manifest", found, key="mc_manifest", format_func=ak.label)
done = mc.current(pick, s.ckpt_dir)
if done is not None:
    st.caption(f"Already embedded with `{s.ckpt_dir.name}`: {done.products:,} products; using it takes a moment.")
if st.button("Use my catalog", key="mc_run", type="primary"):
    bar = st.progress(0.0, text="Reading the manifest…")
    try:
        res = ak.build_my_catalog(s, ex, pick, bar)
    except rt.PathRefused:
        st.error(rt.REFUSED)
        st.stop()
    except ScaleError as e:
        ak.log.exception("my catalog %s failed", pick)
        st.error(ak.public(str(e)))
        st.stop()
    except OSError as e:  # a full disk under SCALE_WORK: the server's paths stay in its log
        ak.log.exception("my catalog %s failed", pick)
        st.error(f"The server could not write this catalog's files ({e.strerror or 'write failed'}). Fix: ask the "
                 "administrator to free disk space where the app keeps catalogs (SCALE_WORK), then press the button "
                 "again: the features already extracted are kept.")
        st.stop()
    ss["my_catalog"], ss["mc_result"] = pick, res.to_json()
    st.rerun()  # the sidebar and every page now read the new catalog

res = ss.get("mc_result")
if ss.get("my_catalog") and res:
    st.success(f"**In use: {ak.label(ss['my_catalog'])}**, {res['products']:,} products embedded "
               f"({res['features_reused']:,} products' features reused from disk, {res['features_built']:,} extracted "
               f"now); search: {'exact' if res['index'] == 'exact' else 'FAISS ' + res['index'].upper() + ' index'}.")
    if res["skipped"]:
        st.warning(f"{len(res['skipped'])} product(s) skipped:")
        st.dataframe(pd.DataFrame(res["skipped"]), hide_index=True, width="stretch")
    if res["partial"]:
        st.caption(f"{len(res['partial'])} product(s) embedded without a modality that could not be read:")
        st.dataframe(pd.DataFrame(res["partial"]), hide_index=True, width="stretch")
    ak.downloads("my_catalog", res)
