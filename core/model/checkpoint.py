"""SCALE checkpoints: a folder with `config.json` (model config, backbone names, extra) and
`model.safetensors` (weights; never pickle). Tensors shared between keys (share_text_table) are stored
once and listed as aliases in the safetensors metadata. Both files are written atomically, mode 0644
(less the umask). Loading checks config.json's values, then the weights' header shapes against the
model that config describes (built on the meta device), before any real tensor is allocated.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from .config import ConfigError, ModelConfig
from ..errors import CheckpointError
from .scale import SCALE

CONFIG, WEIGHTS = "config.json", "model.safetensors"
# buffers added after the first checkpoints; an older file lacks them and loads with their neutral value
OPTIONAL_BUFFERS = ("fusion_center", "fusion_weights", "center_count")
FORMAT = "scale-checkpoint/1"


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, in every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def set_file_mode(path: "str | Path") -> None:
    """0644 less the umask: safetensors' save_file leaves its files 0600, unreadable to a server run as
    another user (the app) or a colleague."""
    os.chmod(path, 0o644 & ~_umask())


def save_safetensors(tensors: dict, path: "str | Path", metadata: dict | None = None) -> None:
    """safetensors' save_file, with its I/O failures (a full disk) raised as OSError like any other write:
    the library raises its own SafetensorError for them ('... (os error 28)')."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as e:  # noqa: BLE001 - SafetensorError has no importable public class; an OSError passes as is
        code = re.search(r"\(os error (\d+)\)", str(e))
        if code is None:
            raise
        n = int(code.group(1))
        raise OSError(n, os.strerror(n), str(path)) from e


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(str(tmp))
        set_file_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(model: SCALE, directory: "str | Path", extra: dict | None = None,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write `directory`/config.json and model.safetensors; floating tensors are stored as `dtype`."""
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
            "backbones": {"text": model.cfg.text_backbone, "audio": model.cfg.audio_backbone,
                          **extra.pop("backbones", {})}, "extra": extra}
    _atomic_write(directory / WEIGHTS, lambda p: save_safetensors(tensors, p, metadata={"aliases": json.dumps(aliases)}))
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
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint config ({e}). Fix: re-save or retrain the checkpoint.") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{path}: no \"model\" object in the checkpoint config. Fix: restore the config.json "
                              "saved with these weights, or retrain.")
    try:
        ModelConfig.from_dict(meta["model"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e} (in its \"model\" object; restoring the config.json saved with these "
                              "weights also fixes it)") from None
    return meta


class _ShapesOnly(TorchFunctionMode):
    """Skips in-place ops (the weight initializers) on meta tensors: they have no data, and their Python meta
    kernels import sympy on first use (3 s of a cold app start). Modes are per thread: other threads are untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):
            first = args[0] if args else next(iter(kwargs.values()), None)
            if isinstance(first, torch.Tensor) and first.is_meta:
                return first
        return func(*args, **kwargs)


def _check_shapes(cfg: ModelConfig, path: Path, shapes: dict[str, list[int]], aliases: dict) -> None:
    """Compare the weights' header shapes with the model `cfg` describes, built on the meta device (no memory),
    so a config.json that disagrees with its weights (e.g. a huge vocab_size) fails before allocation."""
    with torch.device("meta"), _ShapesOnly():
        want = {k: list(v.shape) for k, v in SCALE(cfg, pretrained=False).state_dict().items()}
    have = dict(shapes)
    have.update({name: shapes[src] for name, src in aliases.items() if src in shapes})
    for name in OPTIONAL_BUFFERS:  # saved before they existed
        have.setdefault(name, want.get(name))
    config = path.with_name(CONFIG)
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        raise CheckpointError(f"{path}: weights do not match {config}: " + "; ".join(x for x in (
            f"{len(missing)} tensors missing, e.g. {missing[:3]}" if missing else "",
            f"{len(extra)} unexpected, e.g. {extra[:3]}" if extra else "") if x)
            + " (the layer counts in config.json differ from the weights). Fix: restore the config.json saved "
            "with these weights, load it with the code version that wrote it, or retrain.")
    for k, shape in want.items():
        if have[k] != shape:
            ints = {n: v for n, v in cfg.to_dict().items() if isinstance(v, int) and not isinstance(v, bool)}
            fields_ = [n for n, v in ints.items() if v in set(shape) - set(have[k])]
            hint = f" (check {', '.join(fields_)} in config.json)" if fields_ else ""
            raise CheckpointError(f"{path}: weights do not match {config}: tensor {k!r} is {have[k]} in the "
                                  f"file but the config asks for {shape}{hint}. Fix: restore the config.json saved "
                                  "with these weights, or retrain.")


def load_checkpoint(directory: "str | Path", device: "str | torch.device" = "cpu") -> SCALE:
    """Rebuild the model from config.json and load model.safetensors (float32, on `device`).
    The parsed config.json is kept as `model.checkpoint_info`."""
    from safetensors import safe_open

    directory = Path(directory)
    meta = read_checkpoint_config(directory)
    path = directory / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file missing. Fix: re-save the checkpoint or retrain.")
    cfg = ModelConfig.from_dict(meta["model"])
    corrupt = "corrupt or truncated safetensors file ({}). Fix: re-save the checkpoint or retrain."
    try:  # the header only: nothing allocated yet
        with safe_open(str(path), framework="pt", device="cpu") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
        if not isinstance(aliases, dict):
            raise ValueError(f"the 'aliases' metadata is {type(aliases).__name__}, not an object")
    except Exception as e:  # safetensors raises its own error types for corrupt headers / truncation
        raise CheckpointError(f"{path}: " + corrupt.format(e)) from None
    _check_shapes(cfg, path, shapes, aliases)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - as above
        raise CheckpointError(f"{path}: " + corrupt.format(e)) from None
    state.update({name: state[src] for name, src in aliases.items() if src in state})
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model = SCALE(cfg, pretrained=False)
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
