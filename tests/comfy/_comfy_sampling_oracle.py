"""Run inside ComfyUI's own Python (cwd = the ComfyUI checkout): ComfyUI's sigmas and samplers on a
fixed analytic "model", printed as JSON for tests/comfy/test_comfy_sampling.py.

The model is a smooth function of (x, sigma) standing in for the DiT's velocity v; ComfyUI's
samplers see it through CONST.calculate_denoised (x0 = x - v * sigma), as they see the Wan DiT.
"""
import json
import sys

import comfy.options

comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0], "--cpu"]

import torch  # noqa: E402

import comfy.model_sampling as ms  # noqa: E402
import comfy.samplers as samplers  # noqa: E402
from comfy.extra_samplers import uni_pc  # noqa: E402
from comfy.k_diffusion import sampling as kds  # noqa: E402


class Flow(ms.ModelSamplingDiscreteFlow, ms.CONST):
    pass


def model_sampling(shift):
    m = Flow()
    m.set_parameters(shift=shift, multiplier=1000)
    return m


def velocity(x, sigma):
    return torch.sin(3 * x + sigma) * 0.5 - 0.1 * x


def denoiser(x, sigma, **kwargs):
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return x - velocity(x, s) * s


def ksampler_sigmas(shift, steps, sampler):
    """KSampler's sigmas: uni_pc computes steps+1 and drops the penultimate one."""
    m = model_sampling(shift)
    if sampler in samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
        s = samplers.calculate_sigmas(m, "simple", steps + 1)
        return torch.cat([s[:-2], s[-1:]])
    return samplers.calculate_sigmas(m, "simple", steps)


def main():
    out = {"sigmas": {}, "runs": {}}
    for shift in (1.0, 3.0, 5.0, 8.0, 12.0):
        for steps in (1, 4, 20, 40):
            out["sigmas"][f"{shift}/{steps}"] = samplers.simple_scheduler(model_sampling(shift), steps).tolist()
    noise = torch.randn((1, 4, 3, 5, 6), generator=torch.Generator().manual_seed(7))
    for name, shift, steps in (("euler", 5.0, 4), ("euler", 8.0, 20), ("uni_pc", 8.0, 20),
                               ("uni_pc_bh2", 8.0, 20)):
        sig = ksampler_sigmas(shift, steps, name)
        x = noise * sig[0]              # CONST.noise_scaling on an empty latent
        if name == "euler":
            x = kds.sample_euler(denoiser, x, sig, disable=True)
        else:
            fn = uni_pc.sample_unipc if name == "uni_pc" else uni_pc.sample_unipc_bh2
            x = fn(denoiser, x, sig, extra_args={}, disable=True)
        # KSAMPLER.sample's last line (uni_pc has set sig[-1] to 0.001 in place by now)
        x = model_sampling(shift).inverse_noise_scaling(sig[-1], x)
        out["runs"][f"{name}/{shift}/{steps}"] = {"sigmas": sig.tolist(), "x": x.flatten().tolist()}
    out["noise"] = noise.flatten().tolist()
    print("ORACLE" + json.dumps(out))


main()
