"""Test-only ComfyUI nodes, linked into the test server's custom_nodes (never shipped).

- `Wan22MGTestTinyUMT5Loader`: ComfyUI recognises umT5-XXL by its 24th encoder block
  (`comfy/sd.py::detect_te_model`), which the tiny test encoder lacks. This builds ComfyUI's own Wan
  text encoder class (`comfy.text_encoders.wan.te`, tokenizer `WanT5Tokenizer` on the file's
  `spiece_model`) the way `load_text_encoder_state_dicts` does for CLIPType.WAN, with the dims
  read from the weights through ComfyUI's `umt5xxl_model_config` option, in float32.
- `Wan22MGTestSaveTensors`: writes an IMAGE batch unquantized (safetensors) to the output folder,
  so a test can compare frames at float32 precision.
"""
import os

import torch


class Wan22MGTestTinyUMT5Loader:
    CATEGORY = "testing"
    FUNCTION = "load"
    RETURN_TYPES = ("CLIP",)

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {"required": {"clip_name": (folder_paths.get_filename_list("text_encoders"),)}}

    def load(self, clip_name):
        import comfy.sd
        import comfy.text_encoders.wan as wan
        import comfy.utils
        import folder_paths

        path = folder_paths.get_full_path_or_raise("text_encoders", clip_name)
        sd = comfy.utils.load_torch_file(path, safe_load=True)
        layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.block."))
        vocab, dim = sd["shared.weight"].shape
        heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape[1]
        cfg = {"num_layers": layers, "vocab_size": int(vocab), "d_model": int(dim), "num_heads": int(heads),
               "d_kv": sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0] // heads,
               "d_ff": sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]}

        class Target:
            params: dict = {}
            clip = wan.te()
            tokenizer = wan.WanT5Tokenizer

        clip = comfy.sd.CLIP(Target(), tokenizer_data={"spiece_model": sd.get("spiece_model")}, state_dict=[sd],
                             model_options={"umt5xxl_model_config": cfg, "dtype": torch.float32})
        return (clip,)


class Wan22MGTestSaveTensors:
    CATEGORY = "testing"
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "name": ("STRING", {"default": "frames"})}}

    def save(self, images, name):
        import folder_paths
        from safetensors.torch import save_file

        folder = os.path.join(folder_paths.get_output_directory(), "tests")
        os.makedirs(folder, exist_ok=True)
        save_file({"images": images.float().contiguous().cpu()}, os.path.join(folder, f"{name}.safetensors"))
        return {"ui": {"text": [name]}}


NODE_CLASS_MAPPINGS = {"Wan22MGTestTinyUMT5Loader": Wan22MGTestTinyUMT5Loader,
                       "Wan22MGTestSaveTensors": Wan22MGTestSaveTensors}
