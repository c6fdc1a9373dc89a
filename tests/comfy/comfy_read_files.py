"""Run under ComfyUI's own Python (oracle 1 of issue 12): read model files with ComfyUI's loaders
and write the weights ComfyUI ends up with, dequantized to fp32, as one safetensors file per input.

    python comfy_read_files.py COMFY_DIR OUT_DIR KIND=PATH [KIND=PATH ...]     KIND: dit | t5 | vae

- dit: `comfy.sd.load_diffusion_model` (prefix detection, `convert_old_quants`, model detection,
  mixed-precision ops); quantized weights through their own `dequantize()`.
- t5: ComfyUI recognises umT5-XXL by its 24th block (`comfy/sd.py::detect_te_model`), which a tiny
  file lacks, so this builds ComfyUI's own Wan text encoder class (`comfy.text_encoders.wan.te`)
  the way `load_text_encoder_state_dicts` does for CLIPType.WAN, with the dims read from the
  weights passed through ComfyUI's `umt5xxl_model_config` option, after the same
  `convert_old_quants` / `detect_layer_quantization` steps `load_clip` applies.
- vae: `comfy.sd.VAE(sd=...)`.
Output names are ComfyUI's parameter names (the test maps them).
"""
from __future__ import annotations

import sys
from pathlib import Path

PROMPTS = ("a cat walks in the park", "The Quick brown fox, jumps over 2 dogs!")


def main() -> None:
    comfy_dir, out_dir, *jobs = sys.argv[1:]
    sys.argv = [sys.argv[0], "--cpu", "--force-fp32", "--fp32-unet", "--fp32-text-enc", "--fp32-vae"]
    sys.path.insert(0, comfy_dir)
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch
    from safetensors.torch import save_file

    import comfy.sd
    import comfy.utils

    def plain(t):
        if hasattr(t, "dequantize") and type(t).__name__ == "QuantizedTensor":
            t = t.dequantize()
        return t.detach().float().contiguous().clone()

    out = Path(out_dir)
    for job in jobs:
        extra = {}
        kind, path = job.split("=", 1)
        name = Path(path).stem
        if kind == "dit":
            patcher = comfy.sd.load_diffusion_model(path, model_options={"dtype": torch.float32})
            module = patcher.model.diffusion_model
        elif kind == "t5":
            sd, meta = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
            sd, meta = comfy.utils.convert_old_quants(sd, model_prefix="", metadata=meta)
            from comfy_test_nodes.tiny_umt5 import tiny_umt5_clip

            clip = tiny_umt5_clip(sd, comfy.utils.detect_layer_quantization(sd, ""))
            module = clip.cond_stage_model
            for i, text in enumerate(PROMPTS):   # ComfyUI's tokenizer on the file's spiece_model
                ids = [t[0] for t in clip.tokenizer.tokenize_with_weights(text)["umt5xxl"][0]]
                extra[f"tokens.{i}"] = torch.tensor(ids, dtype=torch.int64)
        elif kind == "vae":
            sd = comfy.utils.load_torch_file(path, safe_load=True)
            module = comfy.sd.VAE(sd=sd).first_stage_model
        else:
            raise SystemExit(f"unknown kind {kind}")
        # named_parameters, not state_dict: a quantized layer's state_dict gives the raw fp8 data
        # and its scale separately; its parameter is the QuantizedTensor, dequantized here.
        tensors = {k: plain(v) for k, v in list(module.named_parameters()) + list(module.named_buffers())
                   if type(v).__name__ == "QuantizedTensor" or v.is_floating_point()}
        tensors.update(extra)
        save_file(tensors, str(out / f"{kind}__{name}.safetensors"))
        print(f"{kind} {path}: {len(tensors)} tensors", flush=True)


if __name__ == "__main__":
    main()
