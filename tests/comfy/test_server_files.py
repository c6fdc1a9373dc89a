"""Issue 12 on a real ComfyUI server with ONLY ComfyUI-format files installed (no models/wan22/
folder): the loader lists them from ComfyUI's own folders (diffusion_models, text_encoders, vae),
a workflow that picks the fp8_scaled experts, the fp8 umT5 and the safetensors VAE runs to an mp4,
and a saved workflow that names a missing file fails with the file, the folder and where to get it."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _comfy_files as cf  # noqa: E402
import comfyui_harness as harness  # noqa: E402
from conftest import missing  # noqa: E402

FILES = cf.TINY_FILES["t2v-A14B"]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, tiny_dir):
    comfy_dir, python, why = harness.locate()
    if comfy_dir is None:
        missing(why)
    base = harness.make_base_dir(tmp_path_factory.mktemp("comfy_files_base"))   # no wan22 checkpoints
    cf.write_comfy_models(tiny_dir, base / "models", ["t2v-A14B"])
    server = harness.Server(comfy_dir, python, base).start()
    yield server, harness.Client(server.url)
    server.stop()


def prompt(**files) -> dict:
    loader = {"task": "t2v-A14B", "checkpoint": "(component files only)", "gpus": 1, "ulysses_size": 1,
              "cfg_parallel": False, "dit_fsdp": False, "t5_fsdp": False, "t5_cpu": False, "offload": "none",
              "dtype": "fp32", "attention": "auto", "device": "cpu", "gpu_ids": "", "weights": "auto",
              "dit_high_noise": FILES["dit_high_noise"][1], "dit_low_noise": FILES["dit_low_noise"][1],
              "text_encoder": FILES["text_encoder"][1], "vae": FILES["vae"][1],
              "dit": "(from checkpoint)", "audio_encoder": "(from checkpoint)"}
    loader.update(files)
    return {
        "1": {"class_type": "Wan22MGModelLoader", "inputs": loader},
        "2": {"class_type": "Wan22MGTextEncode", "inputs": {"prompt": "a fox in the snow", "negative_prompt": ""}},
        "4": {"class_type": "Wan22MGSampler", "inputs": {
            "engine": ["1", 0], "text": ["2", 0], "width": 64, "height": 64, "length": 5, "steps": 2,
            "shift": 5.0, "sampler": "unipc", "seed": 3}},
        "5": {"class_type": "Wan22MGDecode", "inputs": {"latent": ["4", 0]}},
        "6": {"class_type": "CreateVideo", "inputs": {"images": ["5", 0], "fps": ["5", 1]}},
        "7": {"class_type": "SaveVideo", "inputs": {"video": ["6", 0], "filename_prefix": "tests/comfy_files",
                                                    "format": "mp4", "codec": "h264"}},
    }


def test_loader_lists_comfyui_files(comfy):
    server, client = comfy
    assert not server.import_failed(), server.log()[-3000:]
    inputs = client.get("/object_info")["Wan22MGModelLoader"]["input"]
    options = lambda inp: inp[1]["options"]   # noqa: E731  (V3 combos: ["COMBO", {"options": [...]}])
    assert options(inputs["required"]["checkpoint"]) == ["(component files only)"]
    opt = inputs["optional"]
    for part, (_, name) in FILES.items():
        assert name in options(opt[part]), (part, options(opt[part]))
    assert options(opt["weights"]) == ["auto", "bf16", "fp16", "fp32", "fp8", "fp8_fast"]


def test_fp8_files_run_to_an_mp4(comfy):
    server, client = comfy
    run = client.run(prompt(), timeout=600)
    assert run.ok, run.describe() + "\n" + server.log()[-3000:]
    files = [f for f in client.files(run.prompt_id) if f["filename"].endswith(".mp4")]
    assert len(files) == 1, files
    import av

    with av.open(io.BytesIO(client.download(files[0]))) as container:
        frames = list(container.decode(video=0))
        assert len(frames) == 5 and (frames[0].width, frames[0].height) == (64, 64)


def test_missing_file_names_file_folder_and_download(comfy):
    server, client = comfy
    run = client.run(prompt(vae="wan_2.1_vae_missing.safetensors"), timeout=300)
    assert not run.ok
    text = run.describe()
    assert "wan_2.1_vae_missing.safetensors" in text and "vae" in text and "huggingface.co" in text, text
