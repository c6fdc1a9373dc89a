"""Fixtures of the ComfyUI tier: one real ComfyUI server per test module, with this pack linked into
custom_nodes/ and the tiny checkpoints in models/wan22/.

Rule (DESIGN.md §4, same as parity): without ComfyUI (scripts/comfy_setup.sh), ../shared or
chromium the server tests skip with the reason, except under WAN22_REQUIRE_SHARED=1 (CI): then
they fail.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def missing(reason: str) -> None:
    if os.environ.get("WAN22_REQUIRE_SHARED") == "1":
        pytest.fail(reason + "; WAN22_REQUIRE_SHARED=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


def make_broken_checkpoint(models: Path, tiny_task: Path) -> str:
    """models/wan22/broken-t2v: the t2v layout with its second high-noise shard cut in half."""
    dst = models / "broken-t2v"
    shutil.copytree(tiny_task, dst, symlinks=True)
    for expert in ("high_noise_model", "low_noise_model"):
        link = dst / expert
        if link.is_symlink():                  # make the expert folders real copies we may damage
            target = link.resolve()
            link.unlink()
            shutil.copytree(target, link)
    shard = dst / "high_noise_model" / "diffusion_pytorch_model-00002-of-00003.safetensors"
    data = shard.read_bytes()
    shard.chmod(0o644)
    shard.write_bytes(data[: len(data) // 2])
    return dst.name


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, tiny_dir):
    """A running ComfyUI: .url, .client, .base, .server (stopped after the module)."""
    comfy_dir, python, why = harness.locate()
    if comfy_dir is None:
        missing(why)
    if not Path(harness.CHROMIUM).exists():
        missing(f"no chromium at {harness.CHROMIUM} (scripts/comfy_setup.sh installs Debian's)")
    base = harness.make_base_dir(tmp_path_factory.mktemp("comfy_base"), tiny_dir)
    models = base / "models" / "wan22"
    broken = make_broken_checkpoint(models, models / "t2v-A14B")
    server = harness.Server(comfy_dir, python, base).start()

    class Comfy:
        pass

    c = Comfy()
    c.server, c.url, c.base, c.client, c.broken = server, server.url, base, harness.Client(server.url), broken
    yield c
    server.stop()
