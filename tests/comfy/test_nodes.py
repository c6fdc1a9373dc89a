"""The ComfyUI layer in-process, without a ComfyUI server: V3 schemas against the execute
functions (ComfyUI's own `comfy_api` validates them), tooltips from wan_core.field_docs, conversions,
request building, the engine registry (with a stand-in client), and the pack's import cost."""
from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import threading
import time

import pytest
import torch

import nodes
from nodes import checkpoints, convert
from nodes.progress import describe
from nodes.registry import EngineRegistry
from nodes.requests import build_request, build_spec, parse_gpu_ids
from nodes.types import ExpertRouting, TextPrompt
from wan_core.config import TASKS, EngineSpec, GenerateRequest, GuideScale, ParallelConfig, Task
from wan_core.errors import CheckpointError, ConfigError, InputError, WorkerFailure

import comfyui_harness as harness
from comfyui_harness import REPO
from conftest import missing

IDS = ("Wan22MGModelLoader", "Wan22MGExpertRouter", "Wan22MGTextEncode", "Wan22MGAudioEncode",
       "Wan22MGSampler", "Wan22MGDecode", "Wan22MGRelease", "Wan22MGLoRA")


@pytest.fixture(scope="module")
def v3():
    """The node classes, imported with ComfyUI's source on sys.path only while importing (its
    `comfy_api` is what the node families subclass); no server, no model management."""
    comfy_dir, _, why = harness.locate()
    if comfy_dir is None:
        missing(why)
    sys.path.append(str(comfy_dir))
    try:
        extension = importlib.import_module("nodes.extension")
        from comfy_api.latest import io
        importlib.import_module("comfy.latent_formats")    # an oracle of the latent tests
    finally:
        sys.path.remove(str(comfy_dir))
    return {cls.GET_SCHEMA().node_id: cls for cls in extension.node_classes()}, io


def test_node_ids_are_stable(v3):
    classes, _ = v3
    assert tuple(sorted(classes)) == tuple(sorted(IDS)) == tuple(sorted(nodes.NODE_IDS))


@pytest.mark.parametrize("node_id", IDS)
def test_schema_matches_the_function(v3, node_id):
    classes, io = v3
    cls = classes[node_id]
    schema = cls.GET_SCHEMA()                    # ComfyUI's own validation of the schema
    assert issubclass(cls, io.ComfyNode)
    params = inspect.signature(cls.execute).parameters
    # execute takes the inputs as ComfyUI lists them (required, then optional: the widget order)
    ordered = [i.id for i in schema.inputs if not i.optional] + [i.id for i in schema.inputs if i.optional]
    assert ordered == list(params), (ordered, list(params))
    for inp in schema.inputs:
        default = params[inp.id].default
        if inp.optional:
            assert default is None or default == "", f"optional {inp.id} needs a default"
        else:
            assert default is inspect.Parameter.empty, f"required {inp.id} must not have a default"
        assert inp.tooltip, f"{node_id}.{inp.id} has no tooltip"
        if isinstance(inp, io.Combo.Input):
            assert inp.default is None or inp.default in inp.options, inp.id
        elif isinstance(inp, (io.Int.Input, io.Float.Input)):
            assert inp.min <= inp.default <= inp.max, inp.id
    info = cls.GET_NODE_INFO_V1()
    assert info["category"].startswith("model/conditioning/wan/")     # next to ComfyUI's Wan nodes
    assert info["display_name"].startswith("Wan2.2 Multi-GPU ") and info["description"]
    assert "wan" in info["search_aliases"]
    assert len(info["output"]) == len(info["output_name"])


def test_native_looking_names_are_avoided(v3):
    """#11: our prompt and frames nodes take no CLIP / VAE: their names must not read like
    CLIPTextEncode / VAEDecode."""
    classes, _ = v3
    names = {cls.GET_SCHEMA().display_name for cls in classes.values()}
    assert not any("Text Encode" in n or n.endswith("Decode") for n in names), names


def test_tooltips_come_from_the_field_table(v3):
    """The official figures in a tooltip are read from TASKS, not written in prose."""
    classes, _ = v3
    inputs = {i.id: i for i in classes["Wan22MGSampler"].GET_SCHEMA().inputs}
    for task, spec in TASKS.items():
        assert f"{spec.sample_steps}" in inputs["steps"].tooltip and task.value in inputs["steps"].tooltip
        assert f"{spec.sample_shift:g}" in inputs["shift"].tooltip
    loader = {i.id: i for i in classes["Wan22MGModelLoader"].GET_SCHEMA().inputs}
    assert "40" in loader["ulysses_size"].tooltip and "24" in loader["ulysses_size"].tooltip


def test_sampler_takes_the_loaders_output(v3):
    classes, _ = v3
    engine = classes["Wan22MGModelLoader"].GET_NODE_INFO_V1()["output"]
    assert engine == ["WAN22MG_ENGINE"]
    assert classes["Wan22MGSampler"].INPUT_TYPES()["required"]["engine"][0] == engine[0]
    assert classes["Wan22MGDecode"].GET_NODE_INFO_V1()["output"] == ["IMAGE", "FLOAT", "AUDIO"]


def test_pack_import_is_light():
    """Importing the pack (as ComfyUI does) takes < 1 s and imports neither torch nor ComfyUI; the
    node classes load only when ComfyUI calls comfy_entrypoint."""
    code = (
        "import importlib.util, inspect, sys, time\n"
        "t = time.perf_counter()\n"
        f"spec = importlib.util.spec_from_file_location('wan22pack', {str(REPO / '__init__.py')!r},\n"
        f"    submodule_search_locations=[{str(REPO)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['wan22pack'] = m; spec.loader.exec_module(m)\n"
        "print(time.perf_counter() - t, 'torch' in sys.modules or 'comfy_api' in sys.modules,\n"
        "      inspect.iscoroutinefunction(m.comfy_entrypoint), m.WEB_DIRECTORY)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    seconds, heavy_loaded, entry, web = out.stdout.split()
    assert float(seconds) < 1.0 and heavy_loaded == "False" and entry == "True" and web == "./web"


# --------------------------------------------------------------------------------- conversions
def test_image_round_trip():
    img = torch.rand(2, 24, 40, 3)
    e = convert.image_to_engine(img)
    assert e.shape == (3, 24, 40) and torch.equal(e.permute(1, 2, 0), img[0])   # exact: no resampling
    rgba = torch.cat([img, torch.ones(2, 24, 40, 1)], dim=-1)
    assert torch.equal(convert.image_to_engine(rgba), e)
    with pytest.raises(InputError):
        convert.image_to_engine(torch.rand(24, 40, 3))


def test_video_round_trip():
    video = torch.randint(0, 256, (5, 8, 16, 3), dtype=torch.uint8)
    frames = convert.video_to_frames(video)
    assert frames.dtype == torch.float32 and frames.shape == (5, 8, 16, 3)
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    assert torch.equal(frames.mul(255).round().to(torch.uint8), video)      # lossless for 8-bit frames


def test_audio_round_trip():
    wave = torch.rand(1, 2, 1600) * 2 - 1
    a = convert.audio_from_comfy({"waveform": wave, "sample_rate": 16000})
    assert a.sample_rate == 16000 and a.waveform.shape == (2, 1600)
    back = convert.audio_to_comfy(a.waveform, a.sample_rate)
    assert back["sample_rate"] == 16000 and torch.allclose(back["waveform"], wave)
    with pytest.raises(InputError):
        convert.audio_from_comfy({"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000})
    with pytest.raises(InputError):
        convert.audio_from_comfy(torch.zeros(3))


# --------------------------------------------------------------------------------- requests / specs
def test_build_spec_validates_the_layout():
    spec = build_spec("t2v-A14B", "/ckpt", 4, 2, True, True, True, False, "none", "bf16", "auto", "cuda", "4,5,6,7")
    assert spec.parallel == ParallelConfig(num_gpus=4, gpu_ids=(4, 5, 6, 7), ulysses_size=2, cfg_parallel=True,
                                           dit_fsdp=True, t5_fsdp=True)
    with pytest.raises(ConfigError, match="heads"):
        build_spec("ti2v-5B", "/c", 5, 5, False, False, False, False, "none", "bf16", "auto", "cuda")
    with pytest.raises(ConfigError, match="cfg degree"):
        build_spec("t2v-A14B", "/c", 2, 2, True, False, False, False, "none", "bf16", "auto", "cuda")
    with pytest.raises(ConfigError, match="gpu_ids"):
        parse_gpu_ids("0,x", 2)
    with pytest.raises(ConfigError, match="names 1 GPUs"):
        parse_gpu_ids("3", 2)


def _dit_config(folder, num_heads):
    import json

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanModel", "model_type": "t2v",
                                                    "dim": 64 * num_heads, "num_heads": num_heads}))


def test_build_spec_uses_the_checkpoints_head_count(tmp_path):
    """The layout is checked against the checkpoint's config.json, not only the official figure."""
    ti2v = tmp_path / "ti2v"
    _dit_config(ti2v, 10)                  # official TI2V-5B: 24 heads, which 5 does not divide
    spec = build_spec("ti2v-5B", str(ti2v), 5, 5, False, False, False, False, "none", "bf16", "auto", "cuda")
    assert spec.parallel.ulysses_size == 5
    t2v = tmp_path / "t2v"
    _dit_config(t2v / "high_noise_model", 2)   # official T2V-A14B: 40 heads, which 4 divides
    with pytest.raises(ConfigError, match=r"2 attention heads.*config.json has num_heads=2; the official "
                                          r"t2v-A14B has 40"):
        build_spec("t2v-A14B", str(t2v), 4, 4, False, False, False, False, "none", "bf16", "auto", "cuda")
    with pytest.raises(ConfigError, match="offload") as info:   # validate_spec's offload rules too
        build_spec("ti2v-5B", str(ti2v), 1, 1, False, False, False, False, "experts", "bf16", "auto", "cuda")
    assert "num_heads" not in str(info.value)     # not a head-count problem: no note about it


def test_loader_refuses_a_layout_before_any_worker(v3, monkeypatch, tmp_path):
    engine_nodes = importlib.import_module("nodes.engine_nodes")   # loaded by the v3 fixture

    _dit_config(tmp_path / "Tiny-T2V" / "high_noise_model", 2)
    monkeypatch.setattr(checkpoints, "_roots", lambda: [str(tmp_path)])
    reg = EngineRegistry(client_factory=FakeClient)
    monkeypatch.setattr(engine_nodes, "REGISTRY", reg)
    started = FakeClient.started
    with pytest.raises(ConfigError, match="ulysses_size=4"):
        engine_nodes.Wan22MGModelLoader.execute("t2v-A14B", "Tiny-T2V", 4, 4, False, False, False, False,
                                               "none", "bf16", "auto", "cpu")
    assert FakeClient.started == started and reg.loads == 0


def test_loader_names_the_download_command_for_a_missing_checkpoint(v3, monkeypatch, tmp_path):
    engine_nodes = importlib.import_module("nodes.engine_nodes")   # loaded by the v3 fixture

    monkeypatch.setattr(checkpoints, "_roots", lambda: [str(tmp_path)])
    with pytest.raises(CheckpointError) as info:
        engine_nodes.Wan22MGModelLoader.execute("i2v-A14B", checkpoints.NONE_FOUND, 1, 1, False, False, False,
                                               False, "none", "bf16", "auto", "cpu")
    text = str(info.value)
    assert f"to download i2v-A14B there: cd {REPO} && {sys.executable} -m wan_core download i2v-A14B" in text


def test_build_request():
    text = TextPrompt("a cat", "")
    r = build_request(Task.T2V_A14B, text, 64, 48, 5, 3, 12.0, "dpm++", 7)
    assert r == GenerateRequest(prompt="a cat", neg_prompt=None, size=(64, 48), frame_num=5, steps=3,
                                shift=12.0, solver=r.solver, seed=7, decode=True)
    assert r.solver.value == "dpm++" and r.guide_scale is None and r.boundary is None
    routed = ExpertRouting(0.9, GuideScale(low_noise=3.0, high_noise=3.5))
    r = build_request(Task.I2V_A14B, text, 64, 48, 5, 3, 5.0, "unipc", 7, experts=routed, image=torch.rand(1, 8, 8, 3))
    assert r.boundary == 0.9 and r.guide_scale == GuideScale(low_noise=3.0, high_noise=3.5)
    assert r.image.shape == (3, 8, 8)
    with pytest.raises(InputError, match="needs a start image"):
        build_request(Task.I2V_A14B, text, 64, 48, 5, 3, 5.0, "unipc", 7)
    with pytest.raises(InputError, match="does not take an image"):
        build_request(Task.T2V_A14B, text, 64, 48, 5, 3, 5.0, "unipc", 7, image=torch.rand(1, 8, 8, 3))
    with pytest.raises(InputError, match="needs audio"):
        build_request(Task.S2V_14B, text, 64, 48, 5, 3, 5.0, "unipc", 7, image=torch.rand(1, 8, 8, 3))
    with pytest.raises(InputError, match="no prompt"):
        build_request(Task.T2V_A14B, None, 64, 48, 5, 3, 5.0, "unipc", 7)
    with pytest.raises(InputError, match="needs a latent"):
        build_request(Task.T2V_A14B, text, 64, 48, 5, 3, 5.0, "unipc", 7, denoise=0.5)


def _conditioning(rows: int, width: int = 8, pad: int = 512):
    """What CLIPTextEncode gives with ComfyUI's Wan umT5: [1, 512, D], padded rows zeroed."""
    cond = torch.zeros(1, pad, width)
    cond[0, :rows] = torch.randn(rows, width)
    return [[cond, {"pooled_output": None}]]


def test_native_inputs_in_the_request():
    """LATENT sets size and length and becomes the normalised start latent; CONDITIONING replaces
    the prompt with its real rows."""
    latent = {"samples": torch.randn(1, 16, 3, 6, 8)}
    pos, neg = _conditioning(7), _conditioning(3)
    r = build_request(Task.T2V_A14B, None, 640, 640, 81, 3, 5.0, "unipc", 7, denoise=0.5,
                      positive=pos, negative=neg, latent=latent)
    assert r.size == (64, 48) and r.frame_num == 9 and r.denoise == 0.5 and r.init_latent.shape == (16, 3, 6, 8)
    assert torch.equal(r.context, pos[0][0][0, :7]) and torch.equal(r.neg_context, neg[0][0][0, :3])
    assert r.prompt == "" and r.neg_prompt is None
    # with our Prompt node too: positive replaces its prompt, its negative prompt stays
    r = build_request(Task.T2V_A14B, TextPrompt("a cat", "dog"), 64, 48, 5, 3, 5.0, "unipc", 7, positive=pos)
    assert r.prompt == "a cat" and r.neg_prompt == "dog" and r.context is not None and r.neg_context is None
    with pytest.raises(InputError, match=r"\[1, 48, frames"):          # a 2.1 latent for the 5B model
        build_request(Task.TI2V_5B, TextPrompt("x"), 64, 64, 5, 3, 5.0, "unipc", 7, latent=latent)
    with pytest.raises(InputError, match="noise mask"):
        build_request(Task.T2V_A14B, TextPrompt("x"), 64, 48, 5, 3, 5.0, "unipc", 7,
                      latent={**latent, "noise_mask": torch.ones(1, 1, 6, 8)})
    with pytest.raises(InputError, match="2 entries"):
        build_request(Task.T2V_A14B, None, 64, 48, 5, 3, 5.0, "unipc", 7, positive=pos + neg)
    with pytest.raises(InputError, match="all zeros"):
        build_request(Task.T2V_A14B, None, 64, 48, 5, 3, 5.0, "unipc", 7, positive=_conditioning(0))


@pytest.mark.parametrize("vae,fmt,channels", [("2.1", "Wan21", 16), ("2.2", "Wan22", 48)])
def test_native_latent_is_comfyuis_wan_latent_format(v3, vae, fmt, channels):
    """Oracle: ComfyUI's own latent formats (process_out: normalised -> LATENT, process_in back).
    Tolerance 1e-6 relative: we divide by the float32 1/std (as the official VAE and ours do),
    ComfyUI multiplies by std."""
    formats = sys.modules["comfy.latent_formats"]     # ComfyUI's, imported by the v3 fixture
    ours = torch.randn(channels, 3, 4, 5)
    native = convert.latent_to_comfy([ours], vae)["samples"]
    expected = getattr(formats, fmt)().process_out(ours[None])
    torch.testing.assert_close(native, expected, rtol=1e-6, atol=1e-6)
    back = convert.latent_from_comfy({"samples": expected}, vae)
    torch.testing.assert_close(back, getattr(formats, fmt)().process_in(expected)[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(back, ours, rtol=1e-5, atol=1e-5)


def test_lora_node_chains_into_the_request(v3, monkeypatch, tmp_path):
    """Two chained LoRA nodes -> the handle carries both (same spec: no group restart) -> the
    sampler's request; the router's switch_step reaches it too; bad picks are one clear line."""
    from nodes import lora_nodes
    from nodes.types import EngineHandle
    from wan_core.config import LoraSpec, LoraTarget

    classes, _ = v3
    lora = classes["Wan22MGLoRA"]
    monkeypatch.setattr(lora_nodes, "resolve", lambda name: str(tmp_path / name))
    handle = EngineHandle(spec=EngineSpec(task=Task.T2V_A14B, ckpt_dir="x"), checkpoint="x")
    one = lora.execute(handle, "high.safetensors", 1.0, "high_noise").args[0]
    two = lora.execute(one, "style.safetensors", 0.5, LoraTarget.BOTH).args[0]
    assert two.spec == handle.spec and handle.loras == ()
    assert two.loras == (LoraSpec(str(tmp_path / "high.safetensors"), 1.0, LoraTarget.HIGH_NOISE),
                         LoraSpec(str(tmp_path / "style.safetensors"), 0.5, LoraTarget.BOTH))
    routed = classes["Wan22MGExpertRouter"].execute(0.875, 1.0, 1.0, 2).args[0]
    r = build_request(Task.T2V_A14B, TextPrompt("a cat"), 64, 48, 5, 4, 5.0, "euler", 7,
                      experts=routed, loras=two.loras)
    assert r.loras == two.loras and r.switch_step == 2 and r.solver.value == "euler"
    assert build_request(Task.T2V_A14B, TextPrompt("a cat"), 64, 48, 5, 4, 5.0, "euler", 7,
                         experts=classes["Wan22MGExpertRouter"].execute(0.875, 1.0, 1.0).args[0]).switch_step is None
    with pytest.raises(InputError, match="single model; use expert 'both'"):
        lora.execute(EngineHandle(spec=EngineSpec(task=Task.TI2V_5B, ckpt_dir="x"), checkpoint="x"),
                     "high.safetensors", 1.0, "high_noise")
    with pytest.raises(InputError, match="no LoRA in ComfyUI's models/loras"):
        lora.execute(handle, lora_nodes.NONE_FOUND, 1.0, "both")
    monkeypatch.undo()
    monkeypatch.setattr(lora_nodes, "list_loras", lambda: [])
    with pytest.raises(InputError, match="'gone.safetensors' is not in ComfyUI's models/loras"):
        lora_nodes.resolve("gone.safetensors")


def test_phase_text():
    assert describe("denoise", 3, 40) == "step 3/40"
    assert describe("decode", 0, 1, "decoding the video") == "decoding the video"
    assert describe("load", None, None) == "loading"


def test_checkpoint_names_never_resolve_outside_the_folder(monkeypatch, tmp_path):
    (tmp_path / "Wan2.2-TI2V-5B").mkdir()
    (tmp_path / "Wan2.2-TI2V-5B" / "config.json").write_text("{}")
    (tmp_path / "Wan2.2-T2V-A14B" / "high_noise_model").mkdir(parents=True)
    (tmp_path / "Wan2.2-T2V-A14B" / "high_noise_model" / "config.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    monkeypatch.setattr(checkpoints, "_roots", lambda: [str(tmp_path)])
    assert checkpoints.list_checkpoints() == ["Wan2.2-T2V-A14B", "Wan2.2-TI2V-5B"]
    assert checkpoints.resolve("Wan2.2-TI2V-5B") == str(tmp_path / "Wan2.2-TI2V-5B")
    from wan_core.errors import CheckpointError

    for bad in ("notes", "..", "../etc", str(tmp_path / "Wan2.2-TI2V-5B")):
        with pytest.raises(CheckpointError, match="models/wan22"):
            checkpoints.resolve(bad)


# --------------------------------------------------------------------------------- registry
class FakeClient:
    started = 0

    def __init__(self, spec, should_cancel=None, on_progress=None):
        FakeClient.started += 1
        self.spec, self.alive, self.closed, self.calls = spec, True, False, 0
        self.gate = threading.Event()
        self.gate.set()

    def generate(self, request, on_progress=None, should_cancel=None, preview=False):
        self.calls += 1
        self.gate.wait(5)
        if request.prompt == "crash":
            self.alive = False
            raise WorkerFailure(1, "RuntimeError", "boom")
        return "result"

    def status(self):
        class S:
            def as_dict(_):
                return {"alive": self.alive, "ranks": []}
        return S()

    def close(self):
        self.closed, self.alive = True, False


def _spec(gpus=1, ckpt="/c", ids=None, device="cuda"):
    return EngineSpec(task=Task.T2V_A14B, ckpt_dir=ckpt, device=device,
                      parallel=ParallelConfig(num_gpus=gpus, gpu_ids=ids, ulysses_size=gpus))


def test_registry_reuses_restarts_and_releases():
    reg = EngineRegistry(client_factory=FakeClient)
    req = GenerateRequest(prompt="x")
    spec = _spec()
    assert reg.generate(spec, req) == "result" and reg.generate(spec, req) == "result"
    assert reg.loads == 1
    first = reg._groups[spec].client
    with pytest.raises(WorkerFailure):                # a crash ends the group...
        reg.generate(spec, GenerateRequest(prompt="crash"))
    assert first.closed and spec not in reg._groups
    reg.generate(spec, req)                           # ...and the next prompt restarts it
    assert reg.loads == 2
    reg._groups[spec].client.alive = False            # a group that died between prompts
    reg.generate(spec, req)
    assert reg.loads == 3
    assert reg.status()["groups"][0]["layout"] == "1 GPU, bf16"
    assert reg.status()["groups"][0]["plan"].startswith("plan: ~87.9 GiB/GPU at 1280*720x81")  # memory plan
    assert reg.release() == 1 and reg.status()["groups"] == []


def test_registry_frees_gpus_for_a_new_layout_but_not_other_gpus():
    reg = EngineRegistry(client_factory=FakeClient)
    a, b, c = _spec(2, "/a"), _spec(2, "/b", ids=(1, 2)), _spec(2, "/c", ids=(4, 5))
    reg.ensure(a)
    reg.ensure(b)                                     # shares GPU 1 with a: a is ended first
    assert set(reg._groups) == {b}
    reg.ensure(c)
    assert set(reg._groups) == {b, c}


def test_release_while_busy_waits_for_the_request():
    reg = EngineRegistry(client_factory=FakeClient)
    spec = _spec()
    group = reg.ensure(spec)
    group.client.gate.clear()
    worker = threading.Thread(target=reg.generate, args=(spec, GenerateRequest(prompt="x")))
    worker.start()
    while not group.busy.locked():
        time.sleep(0.01)
    assert reg.release(wait=False) == 1               # the /free path: returns at once
    time.sleep(0.1)
    assert not group.client.closed                    # the running request is not cut off
    group.client.gate.set()
    worker.join(5)
    deadline = time.time() + 5
    while not group.client.closed and time.time() < deadline:
        time.sleep(0.01)
    assert group.client.closed and reg.status()["groups"] == []


def test_a_release_asked_for_takes_effect_before_reuse():
    """/free marks a group before its helper thread ends it: the next prompt must not reuse it."""
    reg = EngineRegistry(client_factory=FakeClient)
    spec = _spec()
    old = reg.ensure(spec)
    old.release_pending = True
    assert reg.generate(spec, GenerateRequest(prompt="x")) == "result"
    assert old.client.closed and reg.loads == 2 and reg._groups[spec] is not old
