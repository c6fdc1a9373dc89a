"""Latent previews (issue 5) through the public `WanEngine` on the tiny checkpoints: one preview per
denoising step, on the step's report, and the result bit-identical with and without them (a preview
only reads tensors the step computed anyway). Both latent spaces: T2V-A14B (Wan2.1 VAE, 16
channels, MoE expert switch) and TI2V-5B (Wan2.2 VAE, 48 channels)."""
from __future__ import annotations

import pytest
import torch

from _tiny import cpu_engines, task_ckpt

# task folder -> request fields (tiny sizes of the goldens' runs; no decode: previews are per step)
RUNS = {
    "t2v-A14B": dict(size=(64, 48), frame_num=5, steps=4, shift=12.0),
    "ti2v-5B": dict(size=(64, 64), frame_num=5, steps=3, shift=5.0),
}


@pytest.fixture(scope="module")
def engine_for(tiny_dir, tmp_path_factory):
    return cpu_engines(tiny_dir, tmp_path_factory.mktemp("tiny_ckpt"))


@pytest.mark.parametrize("folder", list(RUNS))
def test_one_preview_per_step_and_the_same_result(engine_for, folder):
    from wan_core.config import GenerateRequest, GuideScale, Solver
    from wan_core.pipeline.preview import LatentPreviewer
    from wan_core.pipeline.progress import RunHooks
    from wan_core.pipeline.schedulers import make_scheduler

    engine = engine_for(folder)
    request = GenerateRequest(prompt="a cat on a stage", seed=42, decode=False, solver=Solver.UNIPC,
                              guide_scale=GuideScale(low_noise=4.0, high_noise=4.0), **RUNS[folder])
    steps = RUNS[folder]["steps"]

    plain = engine.generate(request, RunHooks())
    seen, trace = [], {}
    with_previews = engine.generate(request, RunHooks(on_progress=seen.append, want_preview=True),
                                    trace=trace.__setitem__)

    # Bit-identical: the preview must not change the result.
    assert torch.equal(plain.latent, with_previews.latent)

    denoise = [p for p in seen if p.phase == "denoise"]
    assert [p.step for p in denoise] == list(range(steps + 1))
    assert denoise[0].preview is None                     # the "0/N" report precedes any step
    assert all(p.preview is None for p in seen if p.phase != "denoise")
    c, f, h, w = plain.latent.shape
    for p in denoise[1:]:
        assert p.preview is not None and p.preview.dtype == torch.uint8
        assert p.preview.shape == (h, w, 3) and p.preview.device.type == "cpu"
    # The previews follow the run: consecutive x0 estimates differ (an image frozen at the first
    # step, or the same tensor sent each time, fails here).
    assert not torch.equal(denoise[1].preview, denoise[-1].preview)
    previewer = LatentPreviewer.for_latent(plain.latent)
    # Step 1's preview is the model's x0 estimate x - sigma_0 * v (guided v of the two traced DiT
    # branches), not the latent after the step: recomputed here with the same float32 operations,
    # so exactly equal.
    expert = "high_noise_model" if folder == "t2v-A14B" else "model"
    cond, uncond = (trace[f"call0{i}_{expert}_out"] for i in (0, 1))
    v = uncond + request.guide_scale.high_noise * (cond - uncond)
    sigma0 = make_scheduler(Solver.UNIPC, steps, RUNS[folder]["shift"]).sigmas[0]
    assert torch.equal(denoise[1].preview, previewer((trace["call00_x_in"] - sigma0 * v)[:, f // 2]))
    # The last step lands on sigma 0, where UniPC's first-order update returns its x0 estimate
    # unchanged: the last preview is the final latent's middle frame, exactly.
    assert torch.equal(denoise[-1].preview, previewer(plain.latent[:, f // 2]))


def test_previews_off_by_default(engine_for):
    from wan_core.config import GenerateRequest
    from wan_core.pipeline.progress import RunHooks

    seen = []
    request = GenerateRequest(prompt="a cat", seed=1, decode=False, **RUNS["ti2v-5B"])
    engine_for("ti2v-5B").generate(request, RunHooks(on_progress=seen.append))
    assert seen and all(p.preview is None for p in seen)


def test_s2v_previews_per_step_of_every_clip(tiny_dir, tmp_path_factory):
    """S2V runs the shared loop once per clip (its hooks renumber the steps over the video): one
    preview per step of each clip, 16-channel latents (Wan2.1 VAE)."""
    from wan_core.config import EngineSpec, GenerateRequest, ParamDtype, Task
    from wan_core.io.audio import AudioInput
    from wan_core.io.images import load_image_tensor
    from wan_core.pipeline.engine import WanEngine
    from wan_core.pipeline.progress import RunHooks
    from wan_core.pipeline.s2v import S2VOptions

    ck = task_ckpt(tiny_dir, "s2v-14B", tmp_path_factory.mktemp("tiny_s2v"))
    engine = WanEngine(EngineSpec(task=Task.S2V_14B, ckpt_dir=str(ck), device="cpu",
                                  param_dtype=ParamDtype.FP32))
    request = GenerateRequest(prompt="a person is singing", size=(128, 128), steps=2, shift=3.0,
                              guide_scale=4.5, seed=42, decode=False,
                              image=load_image_tensor(tiny_dir / "inputs" / "s2v_ref.png"),
                              audio=AudioInput(path=str(tiny_dir / "inputs" / "test.wav")),
                              s2v=S2VOptions(infer_frames=16, num_clip=1))
    seen = []
    result = engine.generate(request, RunHooks(on_progress=seen.append, want_preview=True))
    previews = [(p.step, p.preview) for p in seen if p.phase == "denoise" and p.preview is not None]
    assert [s for s, _ in previews] == [1, 2]
    _, _, h, w = result.latent.shape
    assert all(p.shape == (h, w, 3) and p.dtype == torch.uint8 for _, p in previews)
