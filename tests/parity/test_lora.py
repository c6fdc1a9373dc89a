"""LoRA on the tiny DiT: applied (loading/lora.py) == weights merged independently here (fp32).

The reference merge below is written from ComfyUI's rule (comfy/weight_adapter/lora.py:
`W += strength * alpha / rank * up @ down`; `.diff` / `.diff_b` added as they are), with its own
key parsing per format, not with loading/lora.py. Tolerance 1e-6 relative: the engine adds the
low-rank term to the layer output (x @ W^T + (x @ down^T) @ up^T) where the reference multiplies
by the merged W; the two differ by float32 rounding only (~1e-7 per layer on these sizes).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import rel_err
from wan_core.config import GenerateRequest, LoraSpec, LoraTarget
from wan_core.errors import InputError
from wan_core.loading.checkpoint import TensorSource, load_dit
from wan_core.loading.lora import ModelLoras, parse_lora, param_shapes, random_lora, read_lora_file

FORMATS = ("diffusion_model", "peft", "lora_unet", "wan_fun")
STRENGTH = 0.7


@pytest.fixture(scope="module")
def dit(tiny_dir):
    return load_dit(tiny_dir / "ckpt" / "t2v-A14B" / "high_noise_model", dtype=torch.float32,
                    device="cpu").eval()


def _inputs(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    x = torch.randn(1, cfg.in_dim, 2, 8, 8, generator=g)
    ctx = torch.randn(1, 7, cfg.text_dim, generator=g)
    seq_len = 2 * 4 * 4
    return x, torch.tensor([900]), ctx, seq_len


def _forward(model):
    x, t, ctx, seq_len = _inputs(model)
    with torch.no_grad():
        return model(x, t, ctx, seq_len)


def _lora_sd(model, fmt, seed=1):
    """Random LoRA on every block matrix, plus full deltas of other kinds: `.diff_b` on linear
    biases, `.diff` on a norm weight (merged path) and on the modulation table."""
    shapes = param_shapes(model)
    sd = random_lora(shapes, rank=4, fmt=fmt, seed=seed, alpha=2.0 if fmt != "peft" else None,
                     scale=0.05, diff_b=fmt != "peft")
    g = torch.Generator().manual_seed(seed + 100)
    prefix = "diffusion_model."
    if fmt in ("diffusion_model", "peft"):
        sd[prefix + "blocks.1.norm3.diff"] = torch.randn(shapes["blocks.1.norm3.weight"], generator=g) * 0.05
        sd[prefix + "blocks.0.modulation.diff"] = torch.randn(shapes["blocks.0.modulation"], generator=g) * 0.05
    return sd


def _reference_merge(model, sd, fmt, strength):
    """Independent merge: this test's own reading of each key format."""
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())

    def param_of(layer: str) -> str:
        if layer.startswith("diffusion_model."):
            return layer[len("diffusion_model."):]
        flat = layer[len("lora_unet__"):] if layer.startswith("lora_unet__") else layer[len("lora_unet_"):]
        for name in params:     # kohya: dots became underscores
            if name.endswith(".weight") and name[:-7].replace(".", "_") == flat:
                return name[:-7]
        raise KeyError(layer)

    up_sfx, down_sfx = ((".lora_B.weight", ".lora_A.weight") if fmt == "peft"
                        else (".lora_up.weight", ".lora_down.weight"))
    with torch.no_grad():
        for key, up in sd.items():
            if key.endswith(up_sfx):
                layer = key[: -len(up_sfx)]
                down = sd[layer + down_sfx]
                alpha = sd.get(layer + ".alpha")
                scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
                params[param_of(layer) + ".weight"] += strength * scale * (up @ down)
            elif key.endswith(".diff_b"):
                params[param_of(key[: -len(".diff_b")]) + ".bias"] += strength * up
            elif key.endswith(".diff"):   # a layer name (its .weight) or a parameter's full name
                name = key[len("diffusion_model."): -len(".diff")]
                params[name + ".weight" if name + ".weight" in params else name] += strength * up
    return ref


@pytest.mark.parametrize("fmt", FORMATS)
def test_applied_equals_merged(dit, fmt):
    sd = _lora_sd(dit, fmt)
    base_out = _forward(dit)
    expected = _forward(_reference_merge(dit, sd, fmt, STRENGTH))
    state = ModelLoras(dit, "cpu")
    parsed = parse_lora(sd, param_shapes(dit), f"{fmt}.safetensors")
    assert parsed.unmatched == [], parsed.unmatched[:5]
    state.set([(parsed, STRENGTH)])
    try:
        got = _forward(dit)
    finally:
        state.clear()
    assert rel_err(got, expected) < 1e-6
    assert rel_err(expected, base_out) > 1e-3          # the LoRA does change the output
    assert torch.equal(_forward(dit), base_out)        # removed: exactly the base again


def test_strength_zero_and_restore_bit_identical(dit):
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    base_out = _forward(dit)
    parsed = parse_lora(_lora_sd(dit, "diffusion_model"), param_shapes(dit), "x.safetensors")
    state = ModelLoras(dit, "cpu")
    state.set([(parsed, 0.0)])
    assert torch.equal(_forward(dit), base_out)
    for cycle in range(3):                      # apply / re-weight / remove: no drift
        state.set([(parsed, 1.0 + cycle)])
        state.set([(parsed, 0.5), (parsed, -0.25)])
        state.clear()
    assert all(torch.equal(before[k], v) for k, v in dit.state_dict().items())
    assert torch.equal(_forward(dit), base_out)


def test_bf16_restore_exact(tiny_dir):
    model = load_dit(tiny_dir / "ckpt" / "t2v-A14B" / "low_noise_model", dtype=torch.bfloat16, device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    parsed = parse_lora(_lora_sd(model, "diffusion_model"), param_shapes(model), "x.safetensors")
    state = ModelLoras(model, "cpu")
    for s in (1.0, 0.3, 2.0):
        state.set([(parsed, s)])
        assert not torch.equal(model.state_dict()["blocks.0.modulation"], before["blocks.0.modulation"])
    state.clear()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fp8_base_untouched_and_restored(tiny_dir):
    """fp8 bases (loading/fp8.py Fp8Linear): the deltas act on the layer output in its compute dtype,
    the fp8 weights and scales are never written; apply / re-weight / remove leaves every tensor
    bit-identical and the output back to the base's."""
    from wan_core.loading.fp8 import DIT_FP8_LAYERS, apply_fp8

    model = load_dit(tiny_dir / "ckpt" / "t2v-A14B" / "high_noise_model", dtype=torch.float32, device="cpu")
    names = [n for n, _ in model.named_modules() if DIT_FP8_LAYERS.match(n)]
    assert apply_fp8(model, names, torch.float32) == names and names
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base_out = _forward(model)
    sd = _lora_sd(model, "diffusion_model")
    state = ModelLoras(model, "cpu")
    parsed = parse_lora(sd, param_shapes(model), "x.safetensors")
    state.set([(parsed, 1.0)])
    with_lora = _forward(model)
    assert rel_err(with_lora, base_out) > 1e-3
    # the same LoRA on the dequantized model, merged by this test: the fp8 path adds the same delta
    ref = load_dit(tiny_dir / "ckpt" / "t2v-A14B" / "high_noise_model", dtype=torch.float32, device="cpu")
    with torch.no_grad():
        for n in names:
            m = model.get_submodule(n)
            ref.get_submodule(n).weight.copy_(m.weight.float() * m.weight_scale)
    expected = _forward(_reference_merge(ref, sd, "diffusion_model", 1.0))
    assert rel_err(with_lora, expected) < 1e-6
    for s in (0.5, 2.0, 0.0):
        state.set([(parsed, s)])
    state.clear()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(_forward(model), base_out)


def test_unmatched_keys_reported(dit):
    sd = _lora_sd(dit, "diffusion_model")
    extra = {f"text_encoders.layer{i}.lora_up.weight": torch.zeros(2, 2) for i in range(7)}
    parsed = parse_lora({**sd, **extra}, param_shapes(dit), "mixed.safetensors")
    assert len(parsed.unmatched) == 7
    text = parsed.report()
    assert "mixed.safetensors: 7 of" in text and "text_encoders.layer0.lora_up.weight" in text
    assert "(+2 more)" in text


def test_other_family_is_an_error(dit):
    sd = {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(4, 2),
          "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 4)}
    with pytest.raises(InputError, match=r"sdxl_style\.safetensors: none of its 2 keys"):
        parse_lora(sd, param_shapes(dit), "/loras/sdxl_style.safetensors")


def test_shape_mismatch_names_the_file(dit, tiny_dir):
    """A LoRA made on the 5B model (48 latent channels) does not fit the A14B head."""
    from wan_core.loading.checkpoint import dit_on_meta

    with dit_on_meta(tiny_dir / "ckpt" / "ti2v-5B") as (meta, _source, _):
        shapes_5b = param_shapes(meta)
    sd = random_lora(shapes_5b, rank=4, targets=lambda n: n == "head.head.weight")
    with pytest.raises(InputError, match=r"wan2\.2_5b_style\.safetensors: .*head\.head\.weight.*another model"):
        parse_lora(sd, param_shapes(dit), "wan2.2_5b_style.safetensors")


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="missing.safetensors.*does not exist"):
        read_lora_file(tmp_path / "missing.safetensors")
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="broken.safetensors cannot be read"):
        read_lora_file(bad)


def test_lora_spec_parse():
    assert LoraSpec.parse("a/b.safetensors") == LoraSpec("a/b.safetensors", 1.0, LoraTarget.BOTH)
    assert LoraSpec.parse("a/b.safetensors:0.5", "high_noise") == LoraSpec("a/b.safetensors", 0.5,
                                                                          LoraTarget.HIGH_NOISE)
    from wan_core.errors import ConfigError

    with pytest.raises(ConfigError, match="strength 'strong' is not a number"):
        LoraSpec.parse("b.lora:strong")
    with pytest.raises(ConfigError, match="not a finite number"):
        LoraSpec("x.safetensors", float("nan")).checked()


# ------------------------------------------------------------------------------ the engine


@pytest.fixture(scope="module")
def engine(tiny_dir, tmp_path_factory):
    from _tiny import cpu_engines

    return cpu_engines(tiny_dir, tmp_path_factory.mktemp("ck"))("t2v-A14B")


def _write(path: Path, sd) -> str:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


def test_engine_changes_loras_without_reading_base_weights(engine, tmp_path, monkeypatch):
    """Between requests: add, re-weight, move to one expert, remove. No base weight is read again
    (TensorSource.get/get_slice counted), and no LoRA gives back the first latent bit for bit."""
    dits = engine.loras.models
    high = _write(tmp_path / "high.safetensors", _lora_sd(next(iter(dits.values())), "diffusion_model", 5))
    low = _write(tmp_path / "low.safetensors", _lora_sd(next(iter(dits.values())), "lora_unet", 6))
    reads = []
    for name in ("get", "get_slice"):
        orig = getattr(TensorSource, name)
        monkeypatch.setattr(TensorSource, name,
                            lambda self, *a, _o=orig, **k: reads.append(a[0]) or _o(self, *a, **k))

    def run(*loras):
        req = GenerateRequest(prompt="a cat", size=(64, 64), frame_num=5, steps=4, shift=5.0,
                              guide_scale=1.0, solver="euler", switch_step=2, seed=11, decode=False,
                              loras=tuple(loras))
        return engine.generate(req).latent

    plain = run()
    both = run(LoraSpec(high, 1.0, LoraTarget.HIGH_NOISE), LoraSpec(low, 1.0, LoraTarget.LOW_NOISE))
    reweighted = run(LoraSpec(high, 0.5, LoraTarget.HIGH_NOISE), LoraSpec(low, 1.0, LoraTarget.LOW_NOISE))
    high_only = run(LoraSpec(high, 1.0, LoraTarget.HIGH_NOISE))
    again = run()
    assert reads == []
    assert torch.equal(again, plain)
    for a, b in ((plain, both), (both, reweighted), (reweighted, high_only)):
        assert rel_err(a, b) > 1e-4
    assert not engine.loras.state[next(iter(dits))].active


def test_engine_bad_lora_keeps_engine_usable(engine, tmp_path):
    bad = _write(tmp_path / "sdxl.safetensors", {"lora_te_x.lora_up.weight": torch.zeros(2, 2)})
    req = dict(prompt="a cat", size=(64, 64), frame_num=5, steps=2, guide_scale=1.0, solver="euler",
               seed=1, decode=False)
    with pytest.raises(InputError, match="sdxl.safetensors"):
        engine.generate(GenerateRequest(**req, loras=(LoraSpec(bad),)))
    with pytest.raises(InputError, match="nope.safetensors.*does not exist"):
        engine.generate(GenerateRequest(**req, loras=(LoraSpec(str(tmp_path / "nope.safetensors")),)))
    assert engine.generate(GenerateRequest(**req)).latent.shape[0] == 16
    assert os.path.exists(bad)
    # Keys that match nothing are reported with the result (the node logs them in ComfyUI's console).
    sd = _lora_sd(next(iter(engine.loras.models.values())), "diffusion_model", 9)
    mixed = _write(tmp_path / "mixed.safetensors", {**sd, "lora_te_text.lora_up.weight": torch.zeros(2, 2)})
    result = engine.generate(GenerateRequest(**req, loras=(LoraSpec(mixed, 1.0, LoraTarget.HIGH_NOISE),)))
    assert [w for w in result.warnings if "mixed.safetensors: 1 of" in w and "lora_te_text" in w]
    again = engine.generate(GenerateRequest(**req, loras=(LoraSpec(mixed, 1.0, LoraTarget.HIGH_NOISE),)))
    assert not [w for w in again.warnings if "mixed.safetensors" in w]     # said once, when applied


def test_guidance_one_is_one_forward_per_step(engine, monkeypatch):
    """The 4-step template path: euler, guidance 1 on both experts, switch after step 2: the negative
    prompt is not encoded and each step is one batch-1 forward of the step's expert."""
    from wan_core.pipeline.experts import Expert

    calls, prompts = [], []
    handles = [m.register_forward_pre_hook(lambda mod, args, _e=e: calls.append((_e, args[0].shape[0])))
               for e, m in engine.loras.models.items()]
    encode = engine._encode_text
    monkeypatch.setattr(engine, "_encode_text", lambda p: prompts.append(list(p)) or encode(p))
    try:
        engine.generate(GenerateRequest(prompt="a cat", size=(64, 64), frame_num=5, steps=4, shift=5.0,
                                        guide_scale=1.0, solver="euler", switch_step=2, seed=3, decode=False))
        assert prompts == [["a cat"]]
        assert calls == [(Expert.HIGH_NOISE, 1)] * 2 + [(Expert.LOW_NOISE, 1)] * 2
        calls.clear(), prompts.clear()
        engine.generate(GenerateRequest(prompt="a cat", size=(64, 64), frame_num=5, steps=2, shift=5.0,
                                        guide_scale=(1.0, 3.0), solver="euler", switch_step=1, seed=3,
                                        decode=False))
        assert len(prompts[0]) == 2                      # the high-noise expert needs the negative prompt
        assert calls == [(Expert.HIGH_NOISE, 2), (Expert.LOW_NOISE, 1)]
    finally:
        for h in handles:
            h.remove()
