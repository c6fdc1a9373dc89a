"""ComfyUI's own Wan text encoder (`comfy.text_encoders.wan.te`, tokenizer `WanT5Tokenizer` on the
file's `spiece_model`) for a umT5 state dict of any size, in float32.

ComfyUI recognises umT5-XXL by its 24th encoder block (`comfy/sd.py::detect_te_model`), which the tiny
test encoder lacks, so the CLIP object is built the way `load_text_encoder_state_dicts` builds it for
CLIPType.WAN, with the dims read from the weights passed through ComfyUI's `umt5xxl_model_config`
option. One home for the test node, the template oracle and the file-reading oracle (all run under
ComfyUI's Python; imports are deferred so the callers set ComfyUI's args up first).
"""


def tiny_umt5_clip(sd, quant=None):
    """CLIP for umT5 weights `sd`; `quant`: `detect_layer_quantization`'s result (None: plain weights)."""
    import torch

    import comfy.sd
    import comfy.text_encoders.wan as wan

    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.block."))
    vocab, dim = sd["shared.weight"].shape
    heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape[1]
    cfg = {"num_layers": layers, "vocab_size": int(vocab), "d_model": int(dim), "num_heads": int(heads),
           "d_kv": sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0] // heads,
           "d_ff": sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]}

    class Target:
        params: dict = {}
        clip = wan.te(t5_quantization_metadata=quant)
        tokenizer = wan.WanT5Tokenizer

    return comfy.sd.CLIP(Target(), tokenizer_data={"spiece_model": sd.get("spiece_model")}, state_dict=[sd],
                         model_options={"umt5xxl_model_config": cfg, "dtype": torch.float32})
