"""Checkpoint loading on copies of the tiny checkpoints: layouts, damage, dtypes, variant detection."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from wan_core.config import Task
from wan_core.errors import CheckpointError
from wan_core.loading.checkpoint import TensorSource, load_dit, load_pth
from wan_core.loading.detect import detect_task, detect_variant

SHARD2 = "diffusion_pytorch_model-00002-of-00003.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"

DIT_FOLDERS = {  # folder under ckpt/ -> (class, model_type)
    "t2v-A14B/high_noise_model": ("WanModel", "t2v"),
    "t2v-A14B/low_noise_model": ("WanModel", "t2v"),
    "i2v-A14B/high_noise_model": ("WanModel", "i2v"),
    "i2v-A14B/low_noise_model": ("WanModel", "i2v"),
    "ti2v-5B": ("WanModel", "ti2v"),
    "s2v-14B": ("WanModel_S2V", "s2v"),
}


def _copy_dit(src: Path, dst: Path) -> Path:
    """Copy the DiT files only (writable: the shared originals are read-only)."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file() and (p.suffix in (".json", ".safetensors")):
            shutil.copyfile(p, dst / p.name)
    return dst


@pytest.fixture
def t2v_copy(tiny_dir, tmp_path) -> Path:
    return _copy_dit(tiny_dir / "ckpt" / "t2v-A14B" / "high_noise_model", tmp_path / "high_noise_model")


def _raises_naming(fn, *names):
    with pytest.raises(CheckpointError) as info:
        fn()
    msg = str(info.value)
    for name in names:
        assert str(name) in msg, f"{name!r} not in message: {msg}"
    return msg


def test_load_fp32_and_bf16(t2v_copy):
    m32 = load_dit(t2v_copy, dtype=torch.float32)
    m16 = load_dit(t2v_copy, dtype=torch.bfloat16)
    assert {p.dtype for p in m32.parameters()} == {torch.float32}
    assert {p.dtype for p in m16.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta or p.requires_grad for p in m16.parameters())
    assert sum(p.numel() for p in m32.parameters()) == 3_259_200
    with TensorSource.from_folder(t2v_copy) as src:
        w = src.get("blocks.1.ffn.0.weight")
    torch.testing.assert_close(m32.blocks[1].ffn[0].weight, w, rtol=0, atol=0)
    torch.testing.assert_close(m16.blocks[1].ffn[0].weight, w.bfloat16(), rtol=0, atol=0)


def test_single_file_layout(t2v_copy, tmp_path):
    """A single diffusion_pytorch_model.safetensors next to config.json also loads."""
    from safetensors.torch import save_file

    with TensorSource.from_folder(t2v_copy) as src:
        state = {k: src.get(k) for k in src.keys()}
    single = tmp_path / "single"
    single.mkdir()
    shutil.copyfile(t2v_copy / "config.json", single / "config.json")
    save_file(state, str(single / "diffusion_pytorch_model.safetensors"))
    model = load_dit(single, dtype=torch.float32)
    torch.testing.assert_close(model.head.head.weight, state["head.head.weight"], rtol=0, atol=0)


def test_missing_folder(tmp_path):
    _raises_naming(lambda: load_dit(tmp_path / "nope"), tmp_path / "nope", "config.json")


def test_missing_config(t2v_copy):
    (t2v_copy / "config.json").unlink()
    _raises_naming(lambda: load_dit(t2v_copy), t2v_copy / "config.json", "expected layout")


def test_bad_config_json(t2v_copy):
    (t2v_copy / "config.json").write_text("{not json")
    _raises_naming(lambda: load_dit(t2v_copy), t2v_copy / "config.json")


def test_missing_index(t2v_copy):
    (t2v_copy / INDEX).unlink()
    _raises_naming(lambda: load_dit(t2v_copy), t2v_copy / INDEX, SHARD2, "expected layout")


def test_missing_shard(t2v_copy):
    (t2v_copy / SHARD2).unlink()
    msg = _raises_naming(lambda: load_dit(t2v_copy), t2v_copy / SHARD2)
    assert "incomplete" in msg


def test_index_naming_absent_shard(t2v_copy):
    index = json.loads((t2v_copy / INDEX).read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "diffusion_pytorch_model-00009-of-00009.safetensors"
    (t2v_copy / INDEX).write_text(json.dumps(index))
    _raises_naming(lambda: load_dit(t2v_copy), "diffusion_pytorch_model-00009-of-00009.safetensors")


@pytest.mark.parametrize("keep", [0.5, 0.999, 100])
def test_truncated_shard(t2v_copy, keep):
    path = t2v_copy / SHARD2
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(int(size * keep) if keep < 1 else keep)
    _raises_naming(lambda: load_dit(t2v_copy), path, "truncated")


def _rewrite_shard(folder: Path, shard: str, edit) -> None:
    """Rewrite one shard through `edit(state) -> state` and update the index accordingly."""
    from safetensors.torch import load_file, save_file

    state = edit(load_file(str(folder / shard)))
    save_file(state, str(folder / shard), metadata={"format": "pt"})
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard}
    index["weight_map"].update({k: shard for k in state})
    (folder / INDEX).write_text(json.dumps(index))


def test_wrong_key(t2v_copy):
    """A renamed tensor: the model's key is missing and an unexpected one is present (file named)."""
    index = json.loads((t2v_copy / INDEX).read_text())
    shard = index["weight_map"]["blocks.1.ffn.0.weight"]

    def rename(state):
        state["blocks.1.ffn.zero.weight"] = state.pop("blocks.1.ffn.0.weight")
        return state

    _rewrite_shard(t2v_copy, shard, rename)
    _raises_naming(lambda: load_dit(t2v_copy), "blocks.1.ffn.0.weight", "blocks.1.ffn.zero.weight", shard)


def test_missing_key(t2v_copy):
    index = json.loads((t2v_copy / INDEX).read_text())
    shard = index["weight_map"]["head.modulation"]

    def drop(state):
        del state["head.modulation"]
        return state

    _rewrite_shard(t2v_copy, shard, drop)
    _raises_naming(lambda: load_dit(t2v_copy), "head.modulation", "missing", t2v_copy)


def test_index_and_shard_disagree(t2v_copy):
    """The index assigns a key to a shard that does not contain it (mixed downloads)."""
    index = json.loads((t2v_copy / INDEX).read_text())
    key = next(k for k, v in index["weight_map"].items() if v != SHARD2)
    index["weight_map"][key] = SHARD2
    (t2v_copy / INDEX).write_text(json.dumps(index))
    _raises_naming(lambda: load_dit(t2v_copy), SHARD2, key)


def test_shape_mismatch(t2v_copy):
    """config.json says i2v (in_dim 36) but the weights are t2v (16 channels): shape error, named."""
    cfg = json.loads((t2v_copy / "config.json").read_text())
    cfg.update(in_dim=36, model_type="i2v")
    (t2v_copy / "config.json").write_text(json.dumps(cfg))
    index = json.loads((t2v_copy / INDEX).read_text())
    shard = index["weight_map"]["patch_embedding.weight"]
    _raises_naming(lambda: load_dit(t2v_copy), "patch_embedding.weight", shard, "[256, 16, 1, 2, 2]",
                   "[256, 36, 1, 2, 2]")


def test_class_and_keys_disagree(t2v_copy):
    cfg = json.loads((t2v_copy / "config.json").read_text())
    cfg.update(_class_name="WanModel_S2V", model_type="s2v")
    (t2v_copy / "config.json").write_text(json.dumps(cfg))
    _raises_naming(lambda: load_dit(t2v_copy), "WanModel_S2V", "config.json")


def test_s2v_folder_is_refused_by_load_dit(tiny_dir):
    _raises_naming(lambda: load_dit(tiny_dir / "ckpt" / "s2v-14B"), "S2V")


@pytest.mark.parametrize("folder", sorted(DIT_FOLDERS))
def test_variant_detection(tiny_dir, folder):
    path = tiny_dir / "ckpt" / folder
    with TensorSource.from_folder(path) as src:
        v = detect_variant(path, src.keys())
    assert (v.class_name, v.model_type) == DIT_FOLDERS[folder]
    assert detect_variant(path) == v          # from config.json alone
    assert v.is_s2v == (folder == "s2v-14B")


def test_variant_never_from_channel_counts(t2v_copy):
    """model_type comes from config.json: editing it (and not the weights) changes the answer."""
    cfg = json.loads((t2v_copy / "config.json").read_text())
    del cfg["model_type"]
    (t2v_copy / "config.json").write_text(json.dumps(cfg))
    _raises_naming(lambda: detect_variant(t2v_copy), "model_type")


@pytest.mark.parametrize("task,expected", [("t2v-A14B", Task.T2V_A14B), ("i2v-A14B", Task.I2V_A14B),
                                           ("ti2v-5B", Task.TI2V_5B), ("s2v-14B", Task.S2V_14B)])
def test_detect_task(tiny_dir, task, expected):
    assert detect_task(tiny_dir / "ckpt" / task) == expected


def test_detect_task_errors(tiny_dir, tmp_path):
    _raises_naming(lambda: detect_task(tmp_path), tmp_path, "high_noise_model")
    # One expert only: the missing one is named.
    ckpt = tmp_path / "t2v"
    _copy_dit(tiny_dir / "ckpt" / "t2v-A14B" / "high_noise_model", ckpt / "high_noise_model")
    _raises_naming(lambda: detect_task(ckpt), ckpt / "low_noise_model")
    # A single expert given as the checkpoint folder: told to use the parent.
    _raises_naming(lambda: detect_task(ckpt / "high_noise_model"), "parent")


def test_tensor_source_slices(tiny_dir):
    with TensorSource.from_folder(tiny_dir / "ckpt" / "ti2v-5B") as src:
        full = src.get("blocks.0.ffn.0.weight")
        assert src.shape("blocks.0.ffn.0.weight") == (512, 256)
        assert src.dtype("blocks.0.ffn.0.weight") == torch.float32
        torch.testing.assert_close(src.get_slice("blocks.0.ffn.0.weight", 0, 128, 256), full[128:256])
        torch.testing.assert_close(src.get_slice("blocks.0.ffn.0.weight", 1, 10, 20), full[:, 10:20])
        half = src.get_slice("blocks.0.ffn.0.weight", 0, 0, 4, dtype=torch.bfloat16)
        assert half.dtype == torch.bfloat16 and half.shape == (4, 256)
        assert "blocks.0.ffn.0.weight" in src and len(src) == 69
        assert Path(src.file_of("blocks.0.ffn.0.weight")).name.startswith("diffusion_pytorch_model-")
        with pytest.raises(CheckpointError, match="no_such_key"):
            src.get("no_such_key")


def test_load_pth(tiny_dir, tmp_path):
    sd = load_pth(tiny_dir / "ckpt" / "shared" / "models_t5_umt5-xxl-enc-bf16.pth")
    assert len(sd) == 22 and all(v.dtype == torch.bfloat16 for v in sd.values())
    src = TensorSource.from_state_dict(sd, name="t5")
    torch.testing.assert_close(src.get_slice("token_embedding.weight", 0, 0, 3), sd["token_embedding.weight"][:3])

    _raises_naming(lambda: load_pth(tmp_path / "absent.pth"), tmp_path / "absent.pth")
    broken = tmp_path / "Wan2.1_VAE.pth"
    data = (tiny_dir / "ckpt" / "shared" / "Wan2.1_VAE.pth").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    _raises_naming(lambda: load_pth(broken), broken)
    # Arbitrary pickles are refused (weights_only=True), with the file named.
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": _NotATensor()}, str(evil))
    _raises_naming(lambda: load_pth(evil), evil)


class _NotATensor:
    pass
