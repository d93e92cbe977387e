"""Masked-word accuracy of the MLM head on content words, beside a frequency baseline.

Each product's text gets `prob` of its content-word tokens replaced by [MASK] (seeded); the model's
top-1 prediction is scored against the original token. Content words: vocabulary entries of at least
2 letters or digits once a leading "##" is removed (core.data.masking.content_ids, the rule content-word
MLM training masks by too); punctuation and one-letter pieces are left out,
since predicting "." or "s" says nothing a user can read. The baseline always answers the most
frequent content token of `reference` (for example the training split's texts).
"""
from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import numpy as np
import torch

MASK_ID = 103


def masked_word_accuracy(model, items: Sequence[Mapping], content: set[int], reference: Sequence[Mapping] = (),
                         prob: float = 0.15, seed: int = 0, batch_size: int = 32) -> dict:
    """{"top1", "top5", "baseline_top1" (x100), "masked": how many tokens, "baseline_token": its id}."""
    from ..model.inference import collator_for, model_device
    from ..data.dataset import batch_to

    rng = np.random.default_rng(seed)
    texts = [it for it in items if "text.ids" in it]
    counts = Counter(int(t) for it in (reference or texts) for t in np.asarray(it.get("text.ids", ())) if int(t) in content)
    base_tok = counts.most_common(1)[0][0] if counts else -1
    hit1 = hit5 = base = n = 0
    for s in range(0, len(texts), batch_size):
        chunk = [dict(it) for it in texts[s: s + batch_size]]
        batch = collator_for(model)(chunk)  # no masking yet
        ids, labels = batch["text"]["ids"], batch["text"]["labels"]
        for b, it in enumerate(chunk):
            seq = np.asarray(it["text.ids"])
            pos = [i for i, t in enumerate(seq.tolist()) if t in content and rng.random() < prob]
            for p in pos:
                labels[b, p] = ids[b, p]
                ids[b, p] = MASK_ID
        with torch.inference_mode():
            out = model(batch_to(batch, model_device(model)), compute_losses=True, predict=True)
        pred = out.predictions.get("mlm")
        if not pred:
            continue
        top, target = pred["topk_ids"].cpu(), pred["labels"].cpu()
        hit1 += int((top[:, 0] == target).sum())
        hit5 += int((top[:, :5] == target[:, None]).any(1).sum())
        base += int((target == base_tok).sum())
        n += len(target)
    pct = lambda k: round(100.0 * k / n, 2) if n else float("nan")  # noqa: E731
    return {"top1": pct(hit1), "top5": pct(hit5), "baseline_top1": pct(base), "masked": n, "baseline_token": base_tok}
