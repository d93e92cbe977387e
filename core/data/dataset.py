"""Torch Dataset over cached features, and the collate that makes SCALE batches.

One product's features (numpy, as `core.data.features` stores them); an absent modality has no keys:
    text.ids (Lt,) int32            [CLS] title description [SEP]
    table.ids (Lb,) int32           [CLS] key : value ; ... [SEP]
    table.spans (E, 4) int32        per entity (key_start, key_end, value_start, value_end)
    image.tokens (50, 1280) f16     global mean token, then 49 grid regions
    image.boxes (50, 5) f32         (x1/w, y1/h, x2/w, y2/h, area) of each token
    video.frames (F<=12, 1280) f16  pooled frame features
    audio.patches (P, 640) f16      log-mel time patches (80 bins x 8 frames)

A batch (`Collator.__call__`) is a dict: `id` (list of B ids) and, for every modality m, `batch[m]`:
    present (B,) bool        the product has this modality
    mask    (B, L) bool      token may be attended to
  text / table:  ids (B, L) long (after masking), labels (B, L) long (-100 = no loss)
  image / video / audio:  feats (B, L, D) float (masked items zeroed), target (B, L, D) float
                          (the original features), masked (B, L) bool; image also boxes (B, L, 5)

Missing modalities (SCALE.md section 6):
- missing="mask": an absent product's tokens have mask False; the model drops them.
- missing="zero": the authors' zero imputation: zero features / [PAD] ids that are attended to
  (mask True over the batch's padded length of that modality).
Every modality is always in the batch; if no product has it, its length is 1.

Training batches (`StepBatches`): batch k of epoch e is a pure function of (seed, epoch, k, rank): the
epoch's order and length-grouped batch lists come from the seed and epoch, and its masking from a
Collator seeded with (seed, epoch, k, rank). So batches built in DataLoader worker processes equal the
ones built in the training process, and a resumed run sees the batches the killed one would have seen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .masking import IGNORE, entity_mask, item_mask, mlm_mask
from ..modalities import FEATURE_KEY, FEATURE_MODALITIES, MODALITIES, TOKEN_MODALITIES

# Features-dict key of each modality's tokens (core.modalities), split by kind.
FEATURE_KEYS: dict[str, str] = {m: FEATURE_KEY[m] for m in FEATURE_MODALITIES}
ID_KEYS: dict[str, str] = {m: FEATURE_KEY[m] for m in TOKEN_MODALITIES}

Features = Mapping[str, np.ndarray]


class FeatureDataset(Dataset):
    """Products of a feature cache (or any mapping id -> features), in the order of `ids`."""

    def __init__(self, source: "Mapping[str, Features] | object", ids: Sequence[str] | None = None,
                 drop: Sequence[str] = ()) -> None:
        self.source = source
        self.ids = list(ids if ids is not None else source.keys())  # type: ignore[union-attr]
        self.drop = tuple(drop)  # modalities hidden from the model (ablations)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        pid = self.ids[i]
        feats = dict(self.source[pid])  # type: ignore[index]
        for m in self.drop:
            for k in [k for k in feats if k.startswith(m + ".")]:
                del feats[k]
        feats["id"] = pid
        return feats


@dataclass
class Collator:
    """Pads each modality, applies pretext masking, and builds the masks described above."""

    missing: str = "mask"
    mask_prob: float = 0.15
    seed: int | None = None
    vocab_size: int = 30522
    mask_id: int = 103
    pad_id: int = 0
    special_ids: frozenset = field(default_factory=lambda: frozenset({0, 100, 101, 102, 103}))
    dims: dict = field(default_factory=lambda: {"image": 1280, "video": 1280, "audio": 640})
    mlm_targets: frozenset | None = None  # token ids MLM may mask (content words); None: all non-special

    def __post_init__(self) -> None:
        if self.missing not in ("mask", "zero"):
            raise ValueError(f"missing must be 'mask' or 'zero', got {self.missing!r}")
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, items: Sequence[dict]) -> dict:
        batch: dict = {"id": [it.get("id", str(i)) for i, it in enumerate(items)]}
        for m in ("text", "table"):
            batch[m] = self._ids(items, m)
        for m in ("image", "video", "audio"):
            batch[m] = self._feats(items, m)
        return batch

    # ---------------------------------------------------------------- helpers
    def _lengths(self, seqs: list) -> tuple[torch.Tensor, int]:
        present = torch.tensor([s is not None for s in seqs], dtype=torch.bool)
        L = max([len(s) for s in seqs if s is not None] or [1])
        return present, L

    def _token_mask(self, seqs: list, present: torch.Tensor, L: int) -> torch.Tensor:
        mask = torch.zeros(len(seqs), L, dtype=torch.bool)
        for b, s in enumerate(seqs):
            if s is not None:
                mask[b, : len(s)] = True
            elif self.missing == "zero":
                mask[b] = True  # zero imputation: the zeros are attended to
        return mask

    def _ids(self, items: Sequence[dict], m: str) -> dict:
        seqs = [it.get(ID_KEYS[m]) for it in items]
        present, L = self._lengths(seqs)
        ids = torch.full((len(items), L), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), L), IGNORE, dtype=torch.long)
        for b, s in enumerate(seqs):
            if s is None:
                continue
            s = np.asarray(s, dtype=np.int64)
            if m == "text":
                x, y = mlm_mask(s, self.rng, self.mask_prob, self.mask_id, self.vocab_size, self.special_ids,
                                self.mlm_targets)
            else:
                spans = items[b].get("table.spans", np.zeros((0, 4), dtype=np.int64))
                x, y = entity_mask(s, spans, self.rng, self.mask_prob, self.mask_id)
            ids[b, : len(s)] = torch.from_numpy(x)
            labels[b, : len(s)] = torch.from_numpy(y)
        return {"ids": ids, "labels": labels, "mask": self._token_mask(seqs, present, L), "present": present}

    def _feats(self, items: Sequence[dict], m: str) -> dict:
        seqs = [it.get(FEATURE_KEYS[m]) for it in items]
        present, L = self._lengths(seqs)
        D = self.dims[m]
        target = torch.zeros(len(items), L, D, dtype=torch.float32)
        masked = torch.zeros(len(items), L, dtype=torch.bool)
        for b, s in enumerate(seqs):
            if s is None:
                continue
            target[b, : len(s)] = torch.from_numpy(np.asarray(s, dtype=np.float32))
            masked[b, : len(s)] = torch.from_numpy(item_mask(len(s), self.rng, self.mask_prob, skip_first=(m == "image")))
        out = {"feats": target.masked_fill(masked[..., None], 0.0), "target": target, "masked": masked,
               "mask": self._token_mask(seqs, present, L), "present": present}
        if m == "image":
            boxes = torch.zeros(len(items), L, 5, dtype=torch.float32)
            for b, it in enumerate(items):
                if "image.boxes" in it and seqs[b] is not None:
                    boxes[b, : len(seqs[b])] = torch.from_numpy(np.asarray(it["image.boxes"], dtype=np.float32))
            out["boxes"] = boxes
        return out


def batch_to(batch: dict, device: "torch.device | str") -> dict:
    """Move every tensor of a batch to `device`."""
    out: dict = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = {kk: vv.to(device, non_blocking=True) for kk, vv in v.items()}
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------- training batches
def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """Same permutation on every rank, each rank takes its stride (as DistributedSampler, padded)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    total = math.ceil(n / world) * world
    perm += perm[: total - n]
    return perm[rank:total:world]


def epoch_batches(order: list[int], lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                  group: int = 8) -> list[list[int]]:
    """Batches of similar token length: within windows of `group` batches the products are sorted by
    length, then the batches are shuffled. Most shop3k titles are ~12 tokens but a few descriptions
    fill 64, so random batches pad nearly everything to 64; grouping cuts the text work ~3x.
    A pure function of (order, seed, epoch), so a resumed run rebuilds the same batches."""
    window = batch_size * group
    batches = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s: s + window], key=lambda i: (lengths[i], i))
        batches += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = np.random.default_rng([seed, epoch, 1]).permutation(len(batches))
    return [batches[i] for i in perm]


class StepBatches(Dataset):
    """Item (epoch, k) is the collated batch k of that epoch on this rank: a whole batch per item, so a
    DataLoader (batch_size=None) can build batches in worker processes. The masking seed comes from the
    key, never from worker state."""

    def __init__(self, items: FeatureDataset, lengths: np.ndarray, batch_size: int, seed: int,
                 rank: int = 0, world: int = 1, missing: str = "mask", mask_prob: float = 0.15,
                 **collator: object) -> None:
        self.items, self.lengths = items, np.asarray(lengths)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.missing, self.mask_prob = missing, mask_prob
        self.collator = collator  # other Collator fields (vocab_size, dims ...)
        self._epoch: tuple[int, list[list[int]]] | None = None  # the batch lists of the last epoch asked

    def batches(self, epoch: int) -> list[list[int]]:
        if self._epoch is None or self._epoch[0] != epoch:
            order = epoch_order(len(self.items), self.seed, epoch, self.rank, self.world)
            self._epoch = (epoch, epoch_batches(order, self.lengths, self.batch_size, self.seed, epoch))
        return self._epoch[1]

    def __len__(self) -> int:
        return len(self.batches(0))

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, k = key
        col = Collator(missing=self.missing, mask_prob=self.mask_prob, seed=(self.seed, epoch, k, self.rank), **self.collator)
        return col([self.items[i] for i in self.batches(epoch)[k]])

    def keys(self, epoch: int, in_epoch: int, step: int, total: int, epochs: int) -> list[tuple[int, int]]:
        """The (epoch, batch) of every step from (epoch, in_epoch, step) to the run's end, in the
        trainer's order."""
        out = []
        while step < total and epoch < epochs:
            n = len(self.batches(epoch))
            while in_epoch < n and step < total:
                out.append((epoch, in_epoch))
                in_epoch, step = in_epoch + 1, step + 1
            if in_epoch >= n:
                epoch, in_epoch = epoch + 1, 0
        return out


def step_loader(data: StepBatches, keys: Sequence[tuple[int, int]], workers: int = 0, pin: bool = False,
                prefetch: int = 4) -> Iterator[dict]:
    """The batches of `keys`, in order: built here (workers=0, as before) or by `workers` DataLoader
    processes with `prefetch` batches each in flight, in pinned memory when `pin` (for non-blocking
    copies to the GPU)."""
    if workers <= 0 and not pin:
        return (data[k] for k in keys)
    from torch.utils.data import DataLoader

    loader = DataLoader(data, batch_size=None, sampler=list(keys), num_workers=workers, pin_memory=pin,
                        prefetch_factor=prefetch if workers > 0 else None, persistent_workers=workers > 0)
    return iter(loader)
