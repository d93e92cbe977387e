"""Checkpoints: save -> load round trip (float32 / float16, shared text-table), and clear errors."""
import json

import pytest
import torch

from core.model.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
from core.errors import CheckpointError
from core.model.scale import SCALE
from scale_testkit import collate, one_thread, products, tiny  # noqa: F401  (one_thread: autouse)


def outputs(model, batch):
    model.eval()
    with torch.no_grad():
        out = model(batch)
    return out.fused, out.losses["total"], out.predictions["mrp"]["recon"]


@pytest.mark.parametrize("share,table_trains_text", [(False, True), (True, True), (True, False)])
def test_round_trip_identical_outputs(tmp_path, share, table_trains_text):
    cfg = tiny(share_text_table=share, table_trains_text=table_trains_text, learn_temperature=True)
    torch.manual_seed(0)
    model = SCALE(cfg)
    batch = collate(products(3, cfg), cfg, mask_prob=0.3)
    save_checkpoint(model, tmp_path / "ck", extra={"epoch": 2, "backbones": {"image": "efficientnet-lite0"}})
    loaded = load_checkpoint(tmp_path / "ck")
    for a, b in zip(outputs(model, batch), outputs(loaded, batch)):
        assert torch.equal(a, b)
    meta = read_checkpoint_config(tmp_path / "ck")
    assert meta["extra"]["epoch"] == 2 and meta["backbones"] == {"text": cfg.text_backbone, "audio": "logmel",
                                                              "image": "efficientnet-lite0"}
    assert loaded.checkpoint_info["model"]["share_text_table"] is share
    if share and table_trains_text:
        assert loaded.encoders["table"].blocks is loaded.encoders["text"].blocks
    elif share:  # the table reads through the text layers and keeps blocks of its own
        assert loaded.encoders["table"].reader_blocks is loaded.encoders["text"].blocks
        assert loaded.encoders["table"].embed is loaded.encoders["text"].embed


def test_float16_save_loads_as_float32(tmp_path):
    cfg = tiny()
    model = SCALE(cfg)
    batch = collate(products(2, cfg), cfg, mask_prob=0.3)
    save_checkpoint(model, tmp_path, dtype=torch.float16)
    loaded = load_checkpoint(tmp_path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.allclose(outputs(model, batch)[0], outputs(loaded, batch)[0], atol=2e-2)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path / "nothing")
    cfg = tiny()
    save_checkpoint(SCALE(cfg), tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="model.safetensors.*Fix"):
        load_checkpoint(tmp_path)
    weights.write_bytes(b"\x00" * 64)  # garbage header
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path)
    weights.write_bytes(data)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"]["hidden"] = 32  # shapes no longer match
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path)
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path)
    assert not list(tmp_path.glob("*.tmp"))


def test_fusion_center_round_trips_and_old_checkpoints_load_uncentered(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = SCALE(tiny())
    model.fusion_center.normal_()
    save_checkpoint(model, tmp_path / "c")
    back = load_checkpoint(tmp_path / "c")
    torch.testing.assert_close(back.fusion_center, model.fusion_center, atol=2e-3, rtol=2e-3)  # fp16 on disk is fine
    path = tmp_path / "c" / "model.safetensors"  # rewrite it as saved before the center existed
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file({k: v for k, v in load_file(str(path)).items() if k != "fusion_center"}, str(path), metadata=meta)
    assert torch.count_nonzero(load_checkpoint(tmp_path / "c").fusion_center) == 0


def test_a_safetensors_io_failure_is_an_oserror_with_its_errno(tmp_path, monkeypatch):
    """safetensors raises its own error type for a full disk; the trainer and the CLIs catch OSError."""
    import errno

    import safetensors.torch as st

    from core.model.checkpoint import save_safetensors

    class SafetensorError(Exception):
        pass

    def full(*_a, **_k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(st, "save_file", full)
    with pytest.raises(OSError) as e:
        save_safetensors({"x": torch.zeros(2)}, tmp_path / "m.safetensors")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "m.safetensors")

    def other(*_a, **_k):
        raise SafetensorError("Error while serializing: bad dtype")
    monkeypatch.setattr(st, "save_file", other)
    with pytest.raises(SafetensorError):  # not an I/O failure: raised as it is
        save_safetensors({"x": torch.zeros(2)}, tmp_path / "m.safetensors")
