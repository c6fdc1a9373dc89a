"""`python -m wan_core bench --tiny` on the CPU: the files it writes load through the real engine and
the report has every phase (the numbers themselves mean nothing on a CPU with tiny widths)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(600)


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "wan_core", "bench", "--tiny", "--device", "cpu",
                           "--work_dir", str(tmp_path / "files"), "--out", str(out), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_template_preset_tiny(tmp_path):
    """ComfyUI single files (fp8_scaled experts and umT5, VAE) + a rank-64 LoRA per expert, 4 euler
    steps with the switch after step 2, cfg 1; read dequantized (weights=auto)."""
    rep = _run(tmp_path, "--preset", "template", "--weights", "auto")
    files = tmp_path / "files" / "comfy_tiny"
    high = files / "diffusion_models" / "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
    low = files / "diffusion_models" / "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"
    assert high.stat().st_ino == low.stat().st_ino          # one random file for both experts
    from wan_core.loading.single_file import inspect_file

    assert inspect_file(high, expect="dit").encoding == "fp8_scaled"
    assert inspect_file(files / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                        expect="text_encoder").encoding == "fp8_scaled"
    s = rep["settings"]
    assert (s["steps"], s["guide"], s["solver"], s["shift"], s["switch_step"], s["lora_rank"]) == (4, 1.0, "euler", 5.0, 2, 64)
    (video,) = rep["videos"]
    assert len(video["steps_s"]) == 4 and all(t > 0 for t in video["steps_s"])
    for key in ("text_encode_s", "vae_decode_s", "mp4_write_s", "total_s", "expert_switch_s"):
        assert key in video
    assert video["total_s"] >= video["denoise_s"] + video["vae_decode_s"]
    assert (tmp_path / "files" / "videos" / "template_1.mp4").stat().st_size > 0


def test_official_preset_tiny_extrapolated(tmp_path):
    """Official folder layout, unipc with CFG; 2 steps run and extrapolated to the preset's 40."""
    rep = _run(tmp_path, "--preset", "official", "--steps", "2", "--videos", "1")
    folder = tmp_path / "files" / "official_tiny"
    assert (folder / "low_noise_model").is_symlink() and (folder / "high_noise_model" / "config.json").exists()
    assert rep["settings"]["steps_run"] == 2 and rep["settings"]["lora_rank"] == 0
    ex = rep["extrapolated"]
    assert ex["steps"] == 40 and ex["total_s"] > ex["denoise_s"] >= 40 * ex["median_step_s"] * 0.999
