"""Catalog check: every catalog product ranked by its least typical modality agreement (core.explore.catalog_check)."""
from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: pages import appkit and core

import streamlit as st

import appkit as ak
from core.explore.catalog_check import PAIR_NAMES, ranking_csv, rank_catalog, s_centred
from core.model.checkpoint import read_checkpoint_config
from core.errors import ScaleError

s = ak.page("Catalog check",
            "Every catalog product, most suspect listing first. For each pair of a product's modalities (its title "
            "and its image, say), S is how much the two agree; the percentile says where that agreement falls among "
            "the catalog's products with the same pair (3 = only 3% of them agree less). A product's rank comes from "
            "its weakest pair measured as a robust z-score: how many typical spreads (median absolute deviations) "
            "its S lies below the catalog's median for that pair. A photo, spec table, video or sound that belongs "
            "to another listing shows up here near the top.",
            tab="Catalog check")
if s.catalog_path.is_file():  # a stored catalog needs no model: the first render stays fast
    cat, _ = ak.require_catalog(s, None)
else:
    cat, _ = ak.require_catalog(s, ak.require_explorer(s))
try:  # S as the chosen model computes it (centred or not), read from its config.json alone
    centred = s_centred(read_checkpoint_config(s.ckpt_dir)["model"])
except ScaleError:
    centred = True  # no readable checkpoint: the catalog's own stored center decides
cs = ak.catalog_scores(ak.catalog_key(s, cat), cat, centred)

RANK_BY = {"weakest of all pairs": ("all", None), "weakest title pair (else any pair)": ("text", None)}
RANK_BY.update({f"only {p}": ("all", p) for p in PAIR_NAMES})
f1, f2, f3 = st.columns([2, 3, 1])
by = f1.selectbox("Rank by", list(RANK_BY), key="cc_rank_by",
                  help="a pair ranks only the products that have both modalities, by that pair's z-score")
cats = sorted({c for c in cat.categories.tolist() if c})
picked = f2.multiselect("Categories", cats, key="cc_categories", placeholder="all categories",
                        help="percentiles stay against the whole catalog")
shown = f3.number_input("Rows shown", 5, 200, 25, step=5, key="cc_rows")
scope, pair = RANK_BY[by]
df = rank_catalog(cat, cs, scope=scope, pair=pair, categories=picked)
st.caption(f"{len(df)} of {len(cat)} products ranked · the catalog's median S per pair: "
           + ", ".join(f"{p} {m:.2f}" for p, m, n in zip(PAIR_NAMES, cs.median, cs.counts) if n))


@st.cache_data(show_spinner=False, max_entries=2048)
def thumbnail(path: str) -> str | None:
    """A 64-pixel PNG data URI of a catalog image (shop3k photos are far larger), None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((64, 64))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except Exception:  # noqa: BLE001 - a missing picture must not hide the ranking
        ak.log.warning("thumbnail %s unreadable", path, exc_info=True)
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


if df.empty:
    st.info("No product matches: pick another pair or more categories.")
else:
    view = df.head(int(shown)).copy()
    view["thumbnail"] = [thumbnail(p) if p else None for p in view["thumbnail"]]
    st.dataframe(view[["rank", "thumbnail", "title", "category", "weakest_pair", "S", "percentile", "z", "pattern", "id"]],
                 hide_index=True, key="cc_table", row_height=64,
                 column_config={"thumbnail": st.column_config.ImageColumn("image", width="small"),
                                "weakest_pair": st.column_config.TextColumn("weakest pair"),
                                "S": st.column_config.NumberColumn(format="%.3f"),
                                "percentile": st.column_config.NumberColumn(
                                    format="%.1f", help="share of catalog products with this pair that agree less"),
                                "z": st.column_config.NumberColumn(format="%.2f", help="robust z: (S - the pair's catalog "
                                                                     "median) / (1.4826 x its median absolute deviation)"),
                                "pattern": st.column_config.TextColumn(help="present modalities: T text, B table, "
                                                                           "I image, V video, A audio")})
    top = view.iloc[0]
    st.markdown(f"Most suspect: **{top['title'] or top['id']}**: its {top['weakest_pair']} agreement S = "
                f"{top['S']:.2f} is lower than {100 - top['percentile']:.0f}% of the catalog's products with that pair.")
st.download_button("Ranking (CSV)", ranking_csv(df), "catalog_check.csv", "text/csv", key="cc_csv",
                   help="every ranked product with its percentile on each pair (not just the rows shown)")
