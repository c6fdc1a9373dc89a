"""Run under ComfyUI's own Python: the graph of ComfyUI's Wan2.2 4-step LoRA template, with ComfyUI's
own node classes, on the files named in a JSON job; writes the final latent (normalised: the
latent the VAE decodes, i.e. Wan21 `process_in` of the LATENT) to a safetensors file.

    python _comfy_template_oracle.py COMFY_DIR JOB.json OUT.safetensors

Graph (video_wan2_2_14B_t2v.json, LoRA path): UNETLoader x2 -> LoraLoaderModelOnly (per expert, as
listed) -> ModelSamplingSD3(shift) -> KSamplerAdvanced (high noise: add_noise, steps [0, split),
return_with_leftover_noise) -> KSamplerAdvanced (low noise: steps [split, end)); CLIPTextEncode for
the prompt and the negative prompt; an empty latent [1, 16, (F-1)/4+1, H/8, W/8]
(EmptyHunyuanLatentVideo's). Started as ComfyUI is for fp32 parity: --cpu --force-fp32 --fp32-unet
--fp32-text-enc --fp32-vae.

The text encoder: ComfyUI recognises umT5-XXL by its 24th block (comfy/sd.py::detect_te_model), which
the tiny file lacks, so the CLIP object is built the way CLIPLoader(type="wan") builds it, with the
dims read from the weights passed through ComfyUI's own `umt5xxl_model_config` option (the same
construction as tests/comfy/comfy_read_files.py). The nodes are ComfyUI's, called in-process (the
server's executor would call the same functions; it cannot load the tiny umT5 without this hook).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    comfy_dir, job_file, out_file = sys.argv[1:]
    sys.argv = [sys.argv[0], "--cpu", "--force-fp32", "--fp32-unet", "--fp32-text-enc", "--fp32-vae"]
    sys.path.insert(0, comfy_dir)
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch
    from safetensors.torch import save_file

    import comfy.latent_formats
    import comfy.sd
    import comfy.utils
    import folder_paths
    import nodes as comfy_nodes
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    job = json.loads(Path(job_file).read_text())
    for folder, path in job["folders"].items():     # diffusion_models, loras
        folder_paths.add_model_folder_path(folder, path, is_default=True)

    models = {k: comfy_nodes.UNETLoader().load_unet(name, "default")[0] for k, name in job["models"].items()}
    for expert, name, strength in job["loras"]:
        models[expert] = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(models[expert], name, strength)[0]
    models = {k: ModelSamplingSD3().patch(m, job["shift"])[0] for k, m in models.items()}

    clip = _wan_clip(job["text_encoder"], torch, comfy)
    encode = comfy_nodes.CLIPTextEncode()
    positive = encode.encode(clip, job["prompt"])[0]
    negative = encode.encode(clip, job["negative"])[0]

    f = (job["frames"] - 1) // 4 + 1
    channels, stride = job.get("latent", [16, 8])     # 5B: [48, 16] (Wan22ImageToVideoLatent's)
    latent = {"samples": torch.zeros([1, channels, f, job["height"] // stride, job["width"] // stride])}
    common = dict(steps=job["steps"], cfg=job["cfg"], sampler_name=job["sampler"], scheduler=job["scheduler"],
                  positive=positive, negative=negative)
    split = job.get("split")
    if split is None:           # one model, one KSampler (the TI2V-5B template)
        latent = comfy_nodes.KSampler().sample(models["model"], job["seed"], latent_image=latent, **common)[0]
    else:                       # two experts, two KSamplerAdvanced (the A14B templates)
        ks = comfy_nodes.KSamplerAdvanced()
        latent = ks.sample(models["high"], "enable", job["seed"], latent_image=latent, start_at_step=0,
                           end_at_step=split, return_with_leftover_noise="enable", **common)[0]
        latent = ks.sample(models["low"], "disable", job["seed"], latent_image=latent, start_at_step=split,
                           end_at_step=10000, return_with_leftover_noise="disable", **common)[0]
    samples = latent["samples"]
    fmt = comfy.latent_formats.Wan22() if channels == 48 else comfy.latent_formats.Wan21()
    normalised = fmt.process_in(samples)
    save_file({"latent": normalised[0].float().contiguous(), "comfy_latent": samples[0].float().contiguous()},
              out_file)
    print("oracle latent", tuple(normalised.shape), flush=True)


def _wan_clip(path, torch, comfy):
    """CLIPLoader(type='wan') for a umT5 file of any size (see the module docstring)."""
    from comfy_test_nodes.tiny_umt5 import tiny_umt5_clip

    sd, meta = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    sd, meta = comfy.utils.convert_old_quants(sd, model_prefix="", metadata=meta)
    return tiny_umt5_clip(sd, comfy.utils.detect_layer_quantization(sd, ""))


if __name__ == "__main__":
    main()
