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


class Wan22MGTestTinyUMT5Loader:
    CATEGORY = "testing"
    FUNCTION = "load"
    RETURN_TYPES = ("CLIP",)

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {"required": {"clip_name": (folder_paths.get_filename_list("text_encoders"),)}}

    def load(self, clip_name):
        import comfy.utils
        import folder_paths

        from .tiny_umt5 import tiny_umt5_clip

        path = folder_paths.get_full_path_or_raise("text_encoders", clip_name)
        return (tiny_umt5_clip(comfy.utils.load_torch_file(path, safe_load=True)),)


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
