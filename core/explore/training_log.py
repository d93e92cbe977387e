"""The training-log reader: a run's metrics.jsonl or a checkpoint's train_metrics.jsonl, as arrays for the
Training page (losses, learning rate, batch-mean S' per step, validation lines, the fusion fit)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..modalities import MODALITIES


@dataclass
class TrainLog:
    """Per-step training records: train_metrics.jsonl (shipped checkpoint) or a run's metrics.jsonl."""

    path: Path
    steps: np.ndarray  # (T,) int
    epochs: np.ndarray  # (T,)
    lr: np.ndarray  # (T,) float, NaN where not logged
    losses: dict[str, np.ndarray]  # task -> (T,) float, NaN where not logged
    s_prime: np.ndarray | None  # (T, 5, 5) batch-mean S', NaN for absent / unlogged
    val: list[dict]  # the `val` lines (one an epoch), as they are
    fusion: dict | None = None  # the last fusion-fit line: weights, mAP@10 equal / fitted, cross-fitted margins

    def frame(self) -> "pd.DataFrame":
        import pandas as pd

        df = pd.DataFrame({"step": self.steps, "epoch": self.epochs, "lr": self.lr,
                           **{f"loss_{k}": v for k, v in self.losses.items()}})
        if self.s_prime is not None:
            for i, a in enumerate(MODALITIES):
                for j, b in enumerate(MODALITIES):
                    if j >= i:
                        df[f"S_prime_{a}_{b}"] = self.s_prime[:, i, j]
        return df


LOG_NAMES = ("train_metrics.jsonl", "metrics.jsonl")


def find_train_log(folder: str | Path) -> Path | None:
    """train_metrics.jsonl, else metrics.jsonl, in `folder` or (for a run's checkpoint) two levels up.
    A file is taken only under one of those two names: the reader is no viewer for other files."""
    folder = Path(folder)
    if folder.is_file():
        return folder if folder.name in LOG_NAMES else None
    for base in (folder, folder.parent, folder.parent.parent):
        for name in LOG_NAMES:
            if (base / name).is_file():
                return base / name
    return None


def _numbers(d: Mapping) -> dict[str, float]:
    return {str(k): float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _s_prime(sp: object) -> np.ndarray:
    """A logged 5x5 S' (None = absent modality), or all NaN when the line has none or it is malformed."""
    try:
        m = np.array([[np.nan if x is None else float(x) for x in row] for row in sp], dtype=float)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return np.full((5, 5), np.nan)
    return m if m.shape == (len(MODALITIES), len(MODALITIES)) else np.full((5, 5), np.nan)


def _fusion(d: object) -> dict | None:
    """The trainer's fusion-fit line, numbers and modality names only (a log must carry no other text)."""
    if not isinstance(d, dict) or not isinstance(d.get("fusion_weights"), dict):
        return None
    out: dict = {"weights": {m: v for m, v in _numbers(d["fusion_weights"]).items() if m in MODALITIES},
                 **{k: v for k, v in _numbers(d).items() if k in ("mAP@10_equal", "mAP@10_fitted", "products")}}
    names = set(MODALITIES) | {f"{a}+{b}" for i, a in enumerate(MODALITIES) for b in MODALITIES[i + 1:]}
    cross = d.get("cross_fitted") if isinstance(d.get("cross_fitted"), dict) else {}
    out["cross_fitted"] = {k: {"vs": v["vs"], "diff": float(v["diff"])} for k, v in cross.items()
                           if k in ("fused - best single", "fused - best pair") and isinstance(v, dict)
                           and v.get("vs") in names and isinstance(v.get("diff"), (int, float))
                           and not isinstance(v.get("diff"), bool)}
    return out


def loss_curve(values: np.ndarray, window: int) -> np.ndarray:
    """A task's loss per step for plotting: exact zeros (the trainer logs 0 for a batch that had none of the
    task's modality) become gaps, then a trailing mean over `window` steps of the batches that had it."""
    import pandas as pd

    v = np.asarray(values, dtype=float)
    v = np.where(v == 0.0, np.nan, v)
    return pd.Series(v).rolling(max(1, int(window)), min_periods=1).mean().to_numpy()


def default_smoothing(n_steps: int) -> int:
    """About 5% of the run, between 1 and 50 steps: enough to read a trend, not enough to hide it."""
    return int(min(50, max(1, n_steps // 20)))


def read_train_log(folder: str | Path) -> TrainLog | None:
    """Parse a training log. None if absent. Only what the trainer writes is kept, and only its numbers:
    step lines ("loss"), validation lines ("val": {name: number}) and the fusion fit; any other line is skipped (a run may
    be writing its last line, and a log must never carry other text to the page)."""
    path = find_train_log(folder)
    if path is None:
        return None
    steps, epochs, lrs, losses, sps, val, fusion = [], [], [], [], [], [], None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(d, dict):
            continue
        if "fusion" in d:
            fusion = _fusion(d["fusion"]) or fusion
            continue
        if isinstance(d.get("val"), dict):
            val.append({"step": _numbers(d).get("step"), "epoch": _numbers(d).get("epoch"), "val": _numbers(d["val"])})
            continue
        if not isinstance(d.get("loss"), (dict, int, float)) or isinstance(d.get("loss"), bool):
            continue
        nums = _numbers(d)
        steps.append(int(nums.get("step", len(steps))))
        epochs.append(nums.get("epoch", np.nan))
        lrs.append(nums.get("lr", np.nan))
        loss = d["loss"]
        losses.append(_numbers(loss) if isinstance(loss, dict) else {"total": float(loss)})
        sps.append(_s_prime(d.get("S_prime")))
    if not steps:
        return TrainLog(path, np.zeros(0, int), np.zeros(0), np.zeros(0), {}, None, val, fusion) if val else None
    keys = list(dict.fromkeys(k for l in losses for k in l))
    return TrainLog(path=path, steps=np.asarray(steps), epochs=np.asarray(epochs, dtype=float), lr=np.asarray(lrs),
                    losses={k: np.array([l.get(k, np.nan) for l in losses]) for k in keys},
                    s_prime=np.stack(sps) if any(np.isfinite(x).any() for x in sps) else None, val=val, fusion=fusion)
