"""SCALE checkpoints: a folder with `config.json` (model config, backbone names, extra) and
`model.safetensors` (weights; never pickle). Tensors shared between keys (share_text_table) are stored
once and listed as aliases in the safetensors metadata. Both files are written atomically.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import CheckpointError
from .model import SCALE

CONFIG, WEIGHTS = "config.json", "model.safetensors"
FORMAT = "scale-checkpoint/1"


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(model: SCALE, directory: "str | Path", extra: dict | None = None,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write `directory`/config.json and model.safetensors; floating tensors are stored as `dtype`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, aliases, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key in seen:  # the same tensor under a second name (shared text/table encoder)
            aliases[name] = seen[key]
            continue
        seen[key] = name
        t = t.detach().to("cpu")
        tensors[name] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
    extra = dict(extra or {})
    meta = {"format": FORMAT, "model": model.cfg.to_dict(),
            "backbones": {"text": model.cfg.text_backbone, **extra.pop("backbones", {})}, "extra": extra}
    _atomic_write(directory / WEIGHTS, lambda p: save_file(tensors, p, metadata={"aliases": json.dumps(aliases)}))
    _atomic_write(directory / CONFIG, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return directory


def read_checkpoint_config(directory: "str | Path") -> dict:
    """The parsed config.json of a checkpoint (model config, backbones, extra)."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint config. Fix: point to a folder written by save_checkpoint "
                              "(train a model first).")
    try:
        meta = json.loads(path.read_text())
        ModelConfig.from_dict(meta["model"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint config ({e}). Fix: re-save or retrain the checkpoint.") from None
    return meta


def load_checkpoint(directory: "str | Path", device: "str | torch.device" = "cpu") -> SCALE:
    """Rebuild the model from config.json and load model.safetensors (float32, on `device`).
    The parsed config.json is kept as `model.checkpoint_info`."""
    from safetensors import safe_open

    directory = Path(directory)
    meta = read_checkpoint_config(directory)
    path = directory / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file missing. Fix: re-save the checkpoint or retrain.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers / truncation
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e}). "
                              "Fix: re-save the checkpoint or retrain.") from None
    state.update({name: state[src] for name, src in aliases.items() if src in state})
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model = SCALE(ModelConfig.from_dict(meta["model"]), pretrained=False)
    state.setdefault("fusion_center", torch.zeros_like(model.fusion_center))  # saved before it existed: plain sum
    state.setdefault("fusion_weights", torch.ones_like(model.fusion_weights))  # likewise: equal weights
    state.setdefault("center_count", torch.zeros_like(model.center_count))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match {directory / CONFIG} ({str(e)[:500]}). "
                              "Fix: load it with the code version that wrote it, or retrain.") from None
    model.checkpoint_info = meta
    return model.to(device).eval()
