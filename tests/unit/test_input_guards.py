"""Issue 15 item 3 without a server: index shard names confined to their folder (symlinks still
work), the literal-in-a-link message, and the status route's model names."""
from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nodes import links
from nodes import types as T
from wan_core.errors import CheckpointError, InputError
from wan_core.loading.checkpoint import TensorSource

INDEX = "diffusion_pytorch_model.safetensors.index.json"


def _sharded(folder: Path, shard_names=("a.safetensors", "b.safetensors")) -> Path:
    folder.mkdir(parents=True)
    weight_map = {}
    for i, name in enumerate(shard_names):
        save_file({f"w{i}": torch.full((2,), float(i))}, str(folder / name))
        weight_map[f"w{i}"] = name
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("bad", ["../../etc/hostname", "/etc/hostname", "sub/../../x.safetensors",
                                 "..", "", "sub/a.safetensors", 7])
def test_index_may_only_name_files_in_its_folder(tmp_path, bad):
    folder = _sharded(tmp_path / "dit")
    data = json.loads((folder / INDEX).read_text())
    data["weight_map"]["w1"] = bad
    (folder / INDEX).write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as info:
        TensorSource.from_folder(folder)
    msg = str(info.value)
    assert repr(bad) in msg and "not a file name inside" in msg and str(folder) in msg


def test_symlinked_folder_and_symlinked_shards_still_load(tmp_path):
    """The rule is about names: the model folder may be a link (models on another disk), and each
    shard may be a link to elsewhere (Hugging Face cache blobs)."""
    real = _sharded(tmp_path / "elsewhere" / "dit")
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    shutil.move(str(real / "b.safetensors"), str(blobs / "sha256-b"))
    os.symlink(blobs / "sha256-b", real / "b.safetensors")
    linked = tmp_path / "models" / "dit"
    linked.parent.mkdir()
    os.symlink(real, linked, target_is_directory=True)
    src = TensorSource.from_folder(linked)
    try:
        assert sorted(src.keys()) == ["w0", "w1"]
        assert torch.equal(src.get("w1"), torch.full((2,), 1.0))
    finally:
        src.close()


def test_a_literal_where_a_link_belongs_names_node_input_and_source():
    handle = T.EngineHandle(spec=None, checkpoint="x")
    links.require_links("Sampler (node 5)", engine=(T.ENGINE, handle), text=(T.TEXT, T.TextPrompt("p")),
                        experts=(T.EXPERTS, None), image=("IMAGE", torch.zeros(1, 8, 8, 3)))
    with pytest.raises(InputError) as info:
        links.require_links("Wan2.2 Multi-GPU Sampler (node 5)", engine=(T.ENGINE, handle),
                            text=(T.TEXT, "hello"))
    msg = str(info.value)
    assert msg.startswith("Wan2.2 Multi-GPU Sampler (node 5): input 'text' takes a link (WAN22MG_TEXT)")
    assert "'hello'" in msg and "Wan2.2 Multi-GPU Prompt" in msg
    with pytest.raises(InputError, match=r"input 'engine'.*the value 'x' \(str\).*Model Loader"):
        links.require_links(lambda: "Sampler", engine=(T.ENGINE, "x"))
    with pytest.raises(InputError, match=r"input 'audio'.*Load Audio"):
        links.require_links("Speech", audio=("AUDIO", [1, 2]))
    calls = []
    links.require_links(lambda: calls.append(1) or "never", engine=(T.ENGINE, handle))
    assert calls == []      # the label is only made for a message


def test_status_shows_names_relative_to_the_model_folders(tmp_path, monkeypatch):
    from nodes import checkpoints

    models = tmp_path / "ComfyUI" / "models"
    fake = types.SimpleNamespace(models_dir=str(models), folder_names_and_paths={
        "wan22": ([str(models / "wan22")], set()),
        "diffusion_models": ([str(models / "diffusion_models"), str(tmp_path / "other" / "unet")], set())})
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    assert checkpoints.shown_name(str(models / "wan22" / "Wan2.2-T2V-A14B")) == "wan22/Wan2.2-T2V-A14B"
    assert checkpoints.shown_name(str(tmp_path / "other" / "unet" / "x.safetensors")) == \
        "diffusion_models/x.safetensors"
    assert checkpoints.shown_name("/srv/secret/place/ckpt") == "ckpt"
    payload = {"groups": [{"ranks": {"failure": f"rank 0: CheckpointError: {models}/wan22/t2v/x is missing"}}]}
    shown = json.dumps(checkpoints.hide_paths(payload))
    assert str(tmp_path) not in shown and "wan22/t2v/x is missing" in shown
