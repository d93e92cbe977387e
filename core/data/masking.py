"""Masking for the pretext tasks (SCALE.md section 3).

- MLM (text): 15% of real tokens (or of the content-word tokens only, `targets`); of those 80% -> [MASK],
  10% -> random id, 10% kept.
- MEM (table): each entity with p = 0.15; then the whole key or the whole value (50/50) -> [MASK].
- MRP / MFP / MAM (image regions, video frames, audio patches): 15% of items zeroed; the
  caller keeps the original features as targets.
All functions take a numpy Generator so that a seeded loader is reproducible.
"""
from __future__ import annotations

import numpy as np

IGNORE = -100  # label of positions that carry no loss


def content_ids(vocab: "dict[str, int]") -> frozenset[int]:
    """Ids of the vocabulary's word tokens: at least 2 letters or digits once a leading "##" is removed.
    Punctuation and one-letter pieces are left out: predicting "." or "s" says nothing a user can read."""
    out = set()
    for tok, i in vocab.items():
        t = tok[2:] if tok.startswith("##") else tok
        if len(t) >= 2 and t.isalnum() and not (tok.startswith("[") and tok.endswith("]")):
            out.add(int(i))
    return frozenset(out)


def mlm_mask(ids: np.ndarray, rng: np.random.Generator, prob: float, mask_id: int, vocab_size: int,
             special_ids: "set[int] | frozenset[int]", targets: "frozenset[int] | None" = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(input ids, labels) for masked language modelling over one sequence. `targets`: only tokens with
    these ids are masked (None: every non-special token)."""
    ids = ids.copy()
    labels = np.full_like(ids, IGNORE)
    candidates = np.array([i for i, t in enumerate(ids) if int(t) not in special_ids
                           and (targets is None or int(t) in targets)], dtype=np.int64)
    if prob <= 0 or candidates.size == 0:
        return ids, labels
    picked = candidates[rng.random(candidates.size) < prob]
    labels[picked] = ids[picked]
    action = rng.random(picked.size)
    ids[picked[action < 0.8]] = mask_id
    rand = picked[(action >= 0.8) & (action < 0.9)]
    ids[rand] = rng.integers(999, vocab_size, size=rand.size)  # ids below 999 are BERT's special/unused slots
    return ids, labels


def entity_mask(ids: np.ndarray, spans: np.ndarray, rng: np.random.Generator, prob: float,
                mask_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input ids, labels) for masked entity modelling. `spans` rows are (key_start, key_end, value_start, value_end)."""
    ids = ids.copy()
    labels = np.full_like(ids, IGNORE)
    if prob <= 0:
        return ids, labels
    for ks, ke, vs, ve in np.asarray(spans).reshape(-1, 4):
        if rng.random() >= prob:
            continue
        s, e = (ks, ke) if rng.random() < 0.5 else (vs, ve)
        if e <= s:
            continue
        labels[s:e] = ids[s:e]
        ids[s:e] = mask_id
    return ids, labels


def item_mask(n: int, rng: np.random.Generator, prob: float, skip_first: bool = False) -> np.ndarray:
    """Boolean mask of the items (regions, frames, patches) to zero; the first can be exempt (a global token)."""
    masked = rng.random(n) < prob if prob > 0 else np.zeros(n, dtype=bool)
    if skip_first and n:
        masked[0] = False
    return masked
