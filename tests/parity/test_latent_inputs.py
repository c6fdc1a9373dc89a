"""Engine inputs that come from ComfyUI's native sockets (issue 16): a start latent with `denoise`
(video-to-video / continuation) and precomputed text embeddings (CONDITIONING). Tiny T2V on CPU.

Oracles: the engine's own full run (same weights) and ComfyUI's flow noise scaling formula
x = sigma * noise + (1 - sigma) * latent at the first sigma of the schedule's tail (the scheduler
rule itself is tests/unit/test_denoise_schedule.py)."""
from __future__ import annotations

import pytest
import torch

from tests.parity._tiny import cpu_engines
from wan_core.config import GenerateRequest, Solver
from wan_core.errors import ConfigError, InputError
from wan_core.pipeline.schedulers import denoise_schedule, make_scheduler
from wan_core.pipeline.video_tasks import initial_noise

BASE = dict(prompt="a cat walks", neg_prompt="blurry", size=(64, 48), frame_num=5, steps=4,
            shift=12.0, solver=Solver.UNIPC, seed=7)


@pytest.fixture(scope="module")
def t2v(tiny_dir, tmp_path_factory):
    return cpu_engines(tiny_dir, tmp_path_factory.mktemp("ck"))("t2v-A14B")


def _run(engine, **fields):
    trace: dict = {}
    result = engine.generate(GenerateRequest(**{**BASE, **fields}),
                             trace=lambda k, v: trace.__setitem__(k, v))
    return result, trace


@pytest.fixture(scope="module")
def plain(t2v):
    return _run(t2v)


def test_precomputed_contexts_replace_the_encoder(t2v, plain):
    ctx, neg = t2v.text_encoder.encode([BASE["prompt"], BASE["neg_prompt"]])
    result, trace = _run(t2v, prompt="", neg_prompt="ignored", context=ctx, neg_context=neg)
    assert torch.equal(result.latent, plain[0].latent)
    # One given, one encoded: the same run too.
    result, _ = _run(t2v, neg_context=neg)
    assert torch.equal(result.latent, plain[0].latent)
    other, _ = _run(t2v, context=neg)            # the check can fail: another context, another video
    assert not torch.allclose(other.latent, plain[0].latent, atol=1e-3)


def test_a_context_of_the_wrong_width_or_length_is_refused(t2v):
    with pytest.raises(InputError, match="channels"):
        _run(t2v, context=torch.zeros(5, 768))
    with pytest.raises(InputError, match="at most"):
        _run(t2v, context=torch.zeros(t2v.text_len + 1, t2v.text_dim))


@pytest.mark.parametrize("denoise", [0.5, 1.0])
def test_start_latent_is_noised_at_the_tails_first_sigma(t2v, plain, denoise):
    start = plain[0].latent
    result, trace = _run(t2v, init_latent=start, denoise=denoise)
    total, skip = denoise_schedule(BASE["steps"], denoise)
    sigma = make_scheduler(Solver.UNIPC, total, BASE["shift"]).start_at(skip).sigmas[0].item()
    noise = initial_noise(start.shape, BASE["seed"], "cpu")
    torch.testing.assert_close(trace["call00_x_in"], sigma * noise + (1 - sigma) * start, rtol=0, atol=1e-6)
    calls = {k for k in trace if k.endswith("_out") and k.startswith("call")}
    assert len(calls) == 2 * BASE["steps"]       # `steps` steps run, whatever the denoise
    assert result.latent.shape == start.shape and result.video is not None


def test_denoise_zero_only_decodes(t2v, plain):
    result, trace = _run(t2v, init_latent=plain[0].latent, denoise=0.0)
    assert torch.equal(result.latent, plain[0].latent)
    assert torch.equal(result.video, plain[0].video)
    assert not any(k.startswith("call") for k in trace)     # no DiT call, no text encoding
    assert "context" not in trace


def test_bad_start_latents_are_refused(t2v, plain):
    with pytest.raises(InputError, match="needs a latent"):
        _run(t2v, denoise=0.5)
    with pytest.raises(InputError, match="shape"):
        _run(t2v, init_latent=torch.zeros(16, 2, 6, 6))
    with pytest.raises(ConfigError, match="denoise"):
        _run(t2v, init_latent=plain[0].latent, denoise=1.5)
