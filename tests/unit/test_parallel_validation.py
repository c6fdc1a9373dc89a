"""Impossible parallel layouts are a ConfigError at every entry point, before any heavy work.

Entry points: `loading.facts.validate_spec` (the rule set), `WanEngine` (in-process),
`EngineClient` (before it creates a folder, a store or a worker process), the CLI's `precheck`
and the CLI itself. Head counts come from the checkpoint's config.json when there is one (the
folders written here hold only that file, with the real models' head counts), else from the task's
official figure (a folder that does not exist). One test starts a real 2-rank CPU group to show
the request-time check (cfg_parallel with guidance 1) stops a request before it reaches a worker.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wan_core import (ConfigError, EngineSpec, GenerateRequest, GuideScale, OffloadMode,
                      ParallelConfig, ParamDtype, Task)
from wan_core.client import EngineClient
from wan_core.config import validate_request
from wan_core.loading.facts import read_model_facts, validate_spec
from wan_core.runtime.processes import check_gpus_visible, check_start

REPO = Path(__file__).resolve().parents[2]


def _config_only_ckpt(root: Path, task: Task, num_heads: int) -> Path:
    """A checkpoint folder holding only the DiT config.json(s), with the real head count: enough
    for the parallel checks, which must fail before anything else is read."""
    folder = root / task.value
    moe = task in (Task.T2V_A14B, Task.I2V_A14B)
    for sub in (["high_noise_model", "low_noise_model"] if moe else [""]):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / "config.json").write_text(json.dumps({"num_heads": num_heads}))
    return folder


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[Task, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {Task.T2V_A14B: _config_only_ckpt(root, Task.T2V_A14B, 40),
            Task.I2V_A14B: _config_only_ckpt(root, Task.I2V_A14B, 40),
            Task.TI2V_5B: _config_only_ckpt(root, Task.TI2V_5B, 24)}


def _spec(ckpt, task: Task, device: str = "cpu", **parallel) -> EngineSpec:
    return EngineSpec(task=task, ckpt_dir=str(ckpt), device=device, param_dtype=ParamDtype.FP32,
                      parallel=ParallelConfig(**parallel))


# (id, task, ParallelConfig fields, words the message must hold)
REFUSED = [
    ("offload-experts-on-ti2v-5B", Task.TI2V_5B, dict(offload=OffloadMode.EXPERTS),
     ["offload='experts'", "single model", "offload='blocks'"]),
    ("fsdp-plus-offload", Task.T2V_A14B,
     dict(num_gpus=2, ulysses_size=2, dit_fsdp=True, offload=OffloadMode.BLOCKS),
     ["offload='blocks'", "dit_fsdp"]),
    ("fsdp-plus-expert-offload", Task.T2V_A14B,
     dict(num_gpus=2, ulysses_size=2, dit_fsdp=True, offload=OffloadMode.EXPERTS),
     ["offload='experts'", "dit_fsdp"]),
    ("ulysses-3-on-A14B", Task.T2V_A14B, dict(num_gpus=3, ulysses_size=3),
     ["ulysses_size=3", "40 attention heads", "valid degrees: 1, 2, 4, 5, 8"]),
    ("ulysses-5-on-ti2v-5B", Task.TI2V_5B, dict(num_gpus=5, ulysses_size=5),
     ["ulysses_size=5", "24 attention heads", "valid degrees: 1, 2, 3, 4, 6, 8"]),
]
REFUSED_IDS = [r[0] for r in REFUSED]


def _assert_message(exc: BaseException, needles: list[str]) -> None:
    for needle in needles:
        assert needle in str(exc), f"{needle!r} not in {exc}"


@pytest.mark.parametrize("name,task,parallel,needles", REFUSED, ids=REFUSED_IDS)
def test_refused_by_the_rule_set(ckpts, name, task, parallel, needles):
    with pytest.raises(ConfigError) as info:
        validate_spec(_spec(ckpts[task], task, **parallel))
    _assert_message(info.value, needles)


@pytest.mark.parametrize("name,task,parallel,needles", REFUSED, ids=REFUSED_IDS)
def test_refused_by_the_engine_before_loading(ckpts, name, task, parallel, needles):
    """The folders hold no weights: a ConfigError (not a CheckpointError) shows the layout was
    checked before the engine looked at the checkpoint."""
    from wan_core.pipeline.engine import WanEngine

    with pytest.raises(ConfigError) as info:
        WanEngine(_spec(ckpts[task], task, **parallel))
    _assert_message(info.value, needles)


@pytest.mark.parametrize("name,task,parallel,needles", REFUSED, ids=REFUSED_IDS)
def test_refused_by_the_client_before_any_process(ckpts, name, task, parallel, needles):
    """A worker's error would come back as WorkerFailure; a ConfigError is raised in this process,
    before the group creates its folder, store or workers."""
    with pytest.raises(ConfigError) as info:
        EngineClient(_spec(ckpts[task], task, **parallel), start_timeout_s=30)
    _assert_message(info.value, needles)


@pytest.mark.parametrize("name,task,parallel,needles", REFUSED, ids=REFUSED_IDS)
def test_refused_by_the_cli_precheck(ckpts, name, task, parallel, needles):
    from wan_core.cli import precheck

    with pytest.raises(ConfigError) as info:
        precheck(_spec(ckpts[task], task, **parallel), GenerateRequest(prompt="a cat"))
    _assert_message(info.value, needles)


def test_refused_by_the_cli_as_one_line(tmp_path):
    """The command line: exit code 2, one `error:` line, no traceback (official head count: the
    folder does not exist, and the layout is refused before the folder is looked at)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "wan_core", "generate", "--task", "ti2v-5B",
                           "--ckpt_dir", str(tmp_path / "missing"), "--device", "cpu",
                           "--offload", "experts"],
                          capture_output=True, text=True, timeout=120, cwd=str(REPO), env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "offload='experts'" in errors[0] and "single model" in errors[0]


@pytest.mark.parametrize("task", [Task.T2V_A14B, Task.I2V_A14B, Task.S2V_14B])
def test_ulysses_5_on_5_gpus_accepted_for_40_heads(ckpts, tmp_path, task):
    """Issue 6: 40 heads split 8 per rank on 5 ranks. Accepted by the rules and by the client's
    pre-start check (device cpu: no GPU count to check)."""
    ckpt = ckpts.get(task, tmp_path / "missing")   # s2v: no folder, the official 40 heads
    assert read_model_facts(task, str(ckpt)).num_heads == 40
    spec = _spec(ckpt, task, num_gpus=5, ulysses_size=5)
    validate_spec(spec)
    check_start(spec)


def test_heads_come_from_the_checkpoint(tmp_path):
    """A checkpoint's own head count wins over the official one (tiny test models, fine-tunes)."""
    ckpt = _config_only_ckpt(tmp_path, Task.T2V_A14B, 2)
    assert read_model_facts(Task.T2V_A14B, str(ckpt)).num_heads == 2
    with pytest.raises(ConfigError, match="2 attention heads; valid degrees: 1, 2$"):
        validate_spec(_spec(ckpt, Task.T2V_A14B, num_gpus=4, ulysses_size=4))
    (ckpt / "high_noise_model" / "config.json").write_text(json.dumps({"num_heads": "forty"}))
    from wan_core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="num_heads='forty'"):
        read_model_facts(Task.T2V_A14B, str(ckpt)).num_heads


# -- request time: cfg_parallel with guidance 1 -----------------------------------------------------


def test_cfg_parallel_with_guidance_1_refused_per_request(ckpts):
    spec = _spec(ckpts[Task.T2V_A14B], Task.T2V_A14B, num_gpus=2, cfg_parallel=True)
    validate_spec(spec)   # the layout itself is fine
    validate_request(spec, GenerateRequest(prompt="x"))                          # official 3.0/4.0
    validate_request(spec, GenerateRequest(prompt="x", guide_scale=GuideScale(3.0, 4.0)))
    with pytest.raises(ConfigError, match="low-noise=1") as info:
        validate_request(spec, GenerateRequest(prompt="x", guide_scale=GuideScale(1.0, 4.0)))
    assert "high-noise=" not in str(info.value)   # only the expert at 1 is named
    with pytest.raises(ConfigError, match="cfg_parallel"):
        validate_request(spec, GenerateRequest(prompt="x", guide_scale=GuideScale(1.0, 1.0)))
    # Without cfg_parallel guidance 1 is a normal (CFG-free) run.
    plain = _spec(ckpts[Task.T2V_A14B], Task.T2V_A14B, num_gpus=2, ulysses_size=2)
    validate_request(plain, GenerateRequest(prompt="x", guide_scale=GuideScale(1.0, 1.0)))


def test_cfg_parallel_with_guidance_1_refused_by_the_cli_precheck(ckpts):
    from wan_core.cli import precheck

    spec = _spec(ckpts[Task.TI2V_5B], Task.TI2V_5B, num_gpus=2, cfg_parallel=True)
    with pytest.raises(ConfigError, match="cfg_parallel"):
        precheck(spec, GenerateRequest(prompt="x", guide_scale=GuideScale(1.0, 1.0)))


@pytest.mark.timeout(120)
def test_cfg_parallel_with_guidance_1_refused_by_a_running_client(tmp_path):
    """A real 2-rank gloo group (cfg_parallel) on our tiny T2V checkpoint: the request is refused
    in this process with a ConfigError (a worker's refusal would be a WorkerFailure) and the group
    stays usable."""
    from wan_core.tinyckpt import write_tiny_t2v

    ckpt = write_tiny_t2v(tmp_path / "tiny-t2v")
    client = EngineClient(_spec(ckpt, Task.T2V_A14B, num_gpus=2, cfg_parallel=True),
                          start_timeout_s=100)
    try:
        with pytest.raises(ConfigError, match="high-noise=1"):
            client.generate(GenerateRequest(prompt="a cat", guide_scale=GuideScale(3.0, 1.0)))
        assert client.alive and client.status().ranks[1].rank == 1
    finally:
        client.close()


# -- GPUs visible -----------------------------------------------------------------------------------


def test_gpu_count_check_names_what_is_visible():
    check_gpus_visible(ParallelConfig(num_gpus=2, ulysses_size=2), 2, None)
    check_gpus_visible(ParallelConfig(num_gpus=2, ulysses_size=2, gpu_ids=(1, 3)), 4, "0,1,2,3")
    with pytest.raises(ConfigError, match=r"num_gpus=4, but only 2 CUDA GPU\(s\) are visible "
                                          r"\(CUDA_VISIBLE_DEVICES='0,1'\); use num_gpus <= 2"):
        check_gpus_visible(ParallelConfig(num_gpus=4, ulysses_size=4), 2, "0,1")
    with pytest.raises(ConfigError, match=r"gpu_ids=\[0, 3\] names GPU 3, but only 2 CUDA GPU\(s\)"):
        check_gpus_visible(ParallelConfig(num_gpus=2, ulysses_size=2, gpu_ids=(0, 3)), 2, None)
    with pytest.raises(ConfigError, match="sees no CUDA GPU .CUDA_VISIBLE_DEVICES=''"):
        check_gpus_visible(ParallelConfig(num_gpus=1), 0, "")


def _layout_for(n: int) -> dict | None:
    """A valid A14B (40 heads) or ti2v-5B (24 heads) layout on n GPUs, so that only the GPU count
    can refuse it."""
    for task, heads in ((Task.T2V_A14B, 40), (Task.TI2V_5B, 24)):
        if heads % n == 0:
            return dict(task=task, num_gpus=n, ulysses_size=n)
        if n % 2 == 0 and heads % (n // 2) == 0:
            return dict(task=task, num_gpus=n, ulysses_size=n // 2, cfg_parallel=True)
    return None


def test_client_refuses_more_gpus_than_visible(tmp_path):
    """On this machine, whatever it has: ask for one GPU more than torch sees (none on a CPU
    build) and get a ConfigError naming the visible count, before any process starts."""
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    layout = _layout_for(visible + 1)
    if layout is None:
        pytest.skip(f"no valid layout on {visible + 1} GPUs to ask for")
    task = layout.pop("task")
    spec = _spec(tmp_path / "missing", task, device="cuda", **layout)
    with pytest.raises(ConfigError) as info:
        EngineClient(spec, start_timeout_s=30)
    words = "sees no CUDA GPU" if visible == 0 else f"only {visible} CUDA GPU(s) are visible"
    assert words in str(info.value)
