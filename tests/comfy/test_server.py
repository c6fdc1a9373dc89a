"""The pack inside a real ComfyUI server (CPU, tiny checkpoints), through its HTTP/websocket API and
the real frontend in headless Chromium. One server for the whole module; tests run in file order
and share the worker groups they start (that sharing is itself under test)."""
from __future__ import annotations

import copy
import io
import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import comfyui_harness as harness
from conftest import missing

pytestmark = [pytest.mark.comfy, pytest.mark.slow]

NODE_IDS = ("Wan22MGModelLoader", "Wan22MGExpertRouter", "Wan22MGTextEncode", "Wan22MGAudioEncode",
            "Wan22MGSampler", "Wan22MGDecode", "Wan22MGRelease", "Wan22MGLoRA")
WORKFLOWS = sorted((harness.REPO / "example_workflows").glob("*.json"))
T2V_1GPU = "Wan2.2 T2V-A14B text to video, 1 GPU"      # file names are the template browser's titles
T2V_2GPU = "Wan2.2 T2V-A14B text to video, 2 GPUs"
TI2V_1GPU = "Wan2.2 TI2V-5B text-image to video, 1 GPU"
TINY = {"width": 64, "height": 64, "length": 5, "steps": 3}
INPUTS = {"i2v-A14B": "i2v_input.png", "ti2v-5B": "ti2v_input.png", "s2v-14B": "s2v_ref.png"}
FPS = {"t2v-A14B": 16, "i2v-A14B": 16, "ti2v-5B": 24, "s2v-14B": 16}


def by_class(prompt: dict, class_type: str) -> str:
    ids = [k for k, v in prompt.items() if v["class_type"] == class_type]
    assert len(ids) == 1, f"{class_type}: {ids}"
    return ids[0]


def tiny(prompt: dict, tag: str, **sampler) -> dict:
    """An exported prompt made runnable here: tiny checkpoint, CPU ranks in fp32, tiny sizes."""
    p = copy.deepcopy(prompt)
    for node in p.values():
        inp, ct = node["inputs"], node["class_type"]
        if ct == "Wan22MGModelLoader":
            task = inp["task"]
            inp.update(checkpoint=task, device="cpu", dtype="fp32")
        elif ct == "Wan22MGSampler":
            inp.update(TINY)
            inp.update(sampler)
        elif ct == "SaveVideo":
            inp["filename_prefix"] = f"tests/{tag}"
        elif ct == "Wan22MGAudioEncode":            # one clip of 16 frames (1 s of the 2 s test.wav)
            inp.update(frames_per_clip=16, max_clips=1)
    task = p[by_class(p, "Wan22MGModelLoader")]["inputs"]["task"]
    if task == "s2v-14B":                           # S2V sizes are multiples of 64 (area only)
        p[by_class(p, "Wan22MGSampler")]["inputs"].update(width=128, height=128)
    for node in p.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = INPUTS[task]
        elif node["class_type"] == "LoadAudio":
            node["inputs"]["audio"] = "test.wav"
    return p


def status(comfy) -> dict:
    return comfy.client.get("/wan22mg/status")


def run_ok(comfy, prompt, timeout=300, **kw) -> harness.Run:
    run = comfy.client.run(prompt, timeout=timeout, **kw)
    assert run.ok, run.describe() + "\n" + comfy.server.log()[-3000:]
    return run


# ------------------------------------------------------------------------------------------ server
# Rule (DESIGN.md §4, as for parity): without ComfyUI (scripts/comfy_setup.sh), ../shared or chromium
# these tests skip with the reason, except under WAN22_REQUIRE_SHARED=1 (CI): then they fail
# (conftest.missing).
def write_tiny_loras(folder: Path, tiny_dir: Path) -> None:
    """Random rank-4 LoRAs for the tiny A14B models under the names the 4-step workflows pick
    (ComfyUI's lightx2v files), so those workflows run here as shipped."""
    from safetensors.torch import save_file

    from wan_core.loading.checkpoint import dit_on_meta
    from wan_core.loading.lora import param_shapes, random_lora

    folder.mkdir(parents=True, exist_ok=True)
    names = {"t2v-A14B": ("wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors",
                          "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors"),
             "i2v-A14B": ("wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
                          "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors")}
    for task, files in names.items():
        for seed, (expert, name) in enumerate(zip(("high_noise_model", "low_noise_model"), files)):
            with dit_on_meta(tiny_dir / "ckpt" / task / expert) as (meta, _source, _variant):
                shapes = param_shapes(meta)
            save_file(random_lora(shapes, rank=4, seed=seed, scale=0.05), str(folder / name))


def make_broken_checkpoint(models: Path, tiny_task: Path) -> str:
    """models/wan22/broken-t2v: the t2v layout with its second high-noise shard cut in half."""
    dst = models / "broken-t2v"
    shutil.copytree(tiny_task, dst, symlinks=True)
    for expert in ("high_noise_model", "low_noise_model"):
        link = dst / expert
        if link.is_symlink():                  # make the expert folders real copies we may damage
            target = link.resolve()
            link.unlink()
            shutil.copytree(target, link)
    shard = dst / "high_noise_model" / "diffusion_pytorch_model-00002-of-00003.safetensors"
    data = shard.read_bytes()
    shard.chmod(0o644)
    shard.write_bytes(data[: len(data) // 2])
    return dst.name


VAE_FILE = "wan_2.1_vae_fp32_test.safetensors"   # not the template name: always fp32 here
TE_FILE = "umt5_tiny_fp32.safetensors"


def write_native_model_files(base: Path, tiny_dir: Path) -> None:
    """ComfyUI's own VAE and umT5 files made from the same tiny weights (tests/_comfy_files.py),
    and the test-only loader for the tiny umT5 (tests/comfy/comfy_test_nodes)."""
    import sys

    sys.path.insert(0, str(harness.REPO / "tests"))
    import _comfy_files as cf

    shared = tiny_dir / "ckpt" / "shared"
    (base / "models" / "vae").mkdir(parents=True, exist_ok=True)
    (base / "models" / "text_encoders").mkdir(parents=True, exist_ok=True)
    cf.write_vae(shared / "Wan2.1_VAE.pth", base / "models" / "vae" / VAE_FILE, "fp32")
    cf.write_umt5(shared / "models_t5_umt5-xxl-enc-bf16.pth", base / "models" / "text_encoders" / TE_FILE,
                  "fp32", tokenizer_json=shared / "google" / "umt5-xxl" / "tokenizer.json")
    (base / "custom_nodes" / "wan22mg_test_nodes").symlink_to(Path(__file__).with_name("comfy_test_nodes"))


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, tiny_dir):
    """A running ComfyUI: .url, .client, .base, .server (stopped after the module)."""
    comfy_dir, python, why = harness.locate()
    if comfy_dir is None:
        missing(why)
    if not Path(harness.CHROMIUM).exists():
        missing(f"no chromium at {harness.CHROMIUM} (scripts/comfy_setup.sh installs Debian's)")
    base = harness.make_base_dir(tmp_path_factory.mktemp("comfy_base"), tiny_dir)
    write_tiny_loras(base / "models" / "loras", tiny_dir)
    # The 4-step workflows load ComfyUI's template files: tiny ones under the same names.
    import _comfy_files

    _comfy_files.write_comfy_models(tiny_dir, base / "models", ("t2v-A14B", "i2v-A14B"))
    models = base / "models" / "wan22"
    broken = make_broken_checkpoint(models, models / "t2v-A14B")
    write_native_model_files(base, tiny_dir)
    # fp32 VAE and text encoder (ComfyUI runs them in fp16 on CPU otherwise): the native-socket
    # tests compare ComfyUI's VAE decode and umT5 with ours at float32 precision.
    server = harness.Server(comfy_dir, python, base, extra_args=("--fp32-vae", "--fp32-text-enc")).start()
    yield SimpleNamespace(server=server, url=server.url, base=base, client=harness.Client(server.url),
                          broken=broken)
    server.stop()


# ------------------------------------------------------------------------------------------ start
def test_pack_imports_and_registers_every_node(comfy):
    assert not comfy.server.import_failed(), comfy.server.log()[-4000:]
    line = next((ln for ln in comfy.server.import_report() if ln.endswith(harness.PACK_NAME)), None)
    assert line is not None, comfy.server.import_report()
    seconds = float(line.split()[0])
    assert seconds < 1.0, line                      # ComfyUI's own measure of the pack's import
    info = comfy.client.get("/object_info")
    for node_id in NODE_IDS:
        assert node_id in info, node_id
        assert info[node_id]["python_module"] == f"custom_nodes.{harness.PACK_NAME}"
        # V3 schema: beside ComfyUI's own Wan nodes, found by "wan" in the node search.
        assert info[node_id]["category"] == "model/conditioning/wan/multi-gpu", node_id
        assert "wan" in info[node_id]["search_aliases"], node_id
    assert info["WanImageToVideo"]["category"].startswith("model/conditioning/wan")
    loader = info["Wan22MGModelLoader"]["input"]["required"]
    assert loader["checkpoint"][0] == "COMBO"            # V3 combos list their options in the dict
    assert set(loader["checkpoint"][1]["options"]) == {"t2v-A14B", "i2v-A14B", "ti2v-5B", "s2v-14B", comfy.broken,
                                                       "(component files only)"}


def test_template_browser_lists_the_workflows(comfy):
    """ComfyUI's /workflow_templates (what the frontend's template browser shows under the pack's
    folder name) lists every shipped workflow by its title, and serves each JSON and thumbnail."""
    import urllib.parse

    listed = comfy.client.get("/workflow_templates")
    assert sorted(listed.get(harness.PACK_NAME, [])) == [p.stem for p in WORKFLOWS], listed
    for path in WORKFLOWS:
        base = f"/api/workflow_templates/{harness.PACK_NAME}/{urllib.parse.quote(path.stem)}"
        assert comfy.client.get(base + ".json")["nodes"], path.name
        jpg = comfy.client.get(base + ".jpg")
        assert jpg[:3] == b"\xff\xd8\xff", path.name                    # a JPEG, as the frontend asks


def test_status_route(comfy):
    st = status(comfy)
    assert st["groups"] == [] and st["loads"] == 0
    assert comfy.broken in st["checkpoints"]
    assert comfy.client.get("/api/wan22mg/status")["loads"] == 0     # the /api mirror too


# ------------------------------------------------------------------------------------------ frontend
_HIDDEN_JS = ("(type) => app.graph.nodes.filter((n) => n.type === type)[0]"
              ".widgets.filter((w) => w.hidden).map((w) => w.name)")


def search_results(fe, text: str) -> list[str]:
    """What the frontend's node search box lists for `text` (double-click on an empty canvas,
    type): the display names, in order."""
    fe.js("() => app.graph.clear()")
    box = (fe.page.query_selector("canvas#graph-canvas") or fe.page.query_selector("canvas")).bounding_box()
    fe.page.mouse.dblclick(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    fe.page.wait_for_timeout(1000)
    fe.page.keyboard.type(text, delay=30)
    fe.page.wait_for_selector("[role=option]", timeout=15_000)
    fe.page.wait_for_timeout(1500)
    names = fe.js("() => Array.from(document.querySelectorAll('[role=option]')).map(e => e.innerText.split('\\n')[0])")
    fe.page.keyboard.press("Escape")
    return names


@pytest.fixture(scope="module")
def exported(comfy):
    """Every shipped workflow loaded in the real frontend (headless Chromium), exported to API
    format by it, and what the page showed on the way; the run tests queue these exports."""
    seen = SimpleNamespace(api={}, ui={}, missing={}, hidden={}, sampler_hidden={})
    with harness.Frontend(comfy.url) as fe:
        seen.registered = fe.registered()
        seen.extension = fe.js("() => (app.extensions || []).some((e) => e.name === 'wan22mg.ui')")
        for path in WORKFLOWS:
            wf = json.loads(path.read_text())
            seen.missing[path.stem] = fe.missing_nodes(wf)
            fe.load(wf, path.name)
            seen.api[path.stem] = fe.export_api()
            seen.ui[path.stem] = fe.serialize()
            seen.hidden[path.stem] = fe.js(_HIDDEN_JS, "Wan22MGModelLoader")
            seen.sampler_hidden[path.stem] = fe.js(_HIDDEN_JS, "Wan22MGSampler")
        # ulysses_size snaps to a degree that divides the head count; gpus follows it.
        seen.snapped = fe.js("""() => {
            const n = app.graph.nodes.find((n) => n.type === 'Wan22MGModelLoader');
            const w = (name) => n.widgets.find((x) => x.name === name);
            w('task').value = 'ti2v-5B'; w('cfg_parallel').value = false;
            w('ulysses_size').value = 5; w('ulysses_size').callback(5);
            return [w('ulysses_size').value, w('gpus').value];
        }""")
        status_js = ("() => app.graph.nodes.find((n) => n.type === 'Wan22MGModelLoader')"
                     ".widgets.find((w) => w.name === 'wan22mg_status').value")
        fe.page.wait_for_function(status_js, timeout=15_000)
        seen.status_line = fe.js(status_js)
        seen.search_wan = search_results(fe, "wan")
        seen.page_errors, seen.console_errors = fe.page_errors, fe.console_errors
    return seen


def test_workflows_load_in_the_frontend_and_export(exported):
    assert len(WORKFLOWS) == 12, [w.name for w in WORKFLOWS]
    assert set(NODE_IDS) <= exported.registered and exported.extension
    for path in WORKFLOWS:
        wf = json.loads(path.read_text())
        assert "nodes" in wf and "links" in wf, f"{path.name} is not a UI-format workflow"
        assert any(n["type"] in ("Note", "MarkdownNote") and "models/wan22/" in json.dumps(n.get("widgets_values"))
                   for n in wf["nodes"]), f"{path.name} has no note about models/wan22/"
        assert exported.missing[path.stem] == [], path.name
        # The saved widget values survive the load (V3 schemas keep the V1 widget order; widgets
        # added since come after them, at their defaults).
        loaded = {n["id"]: n for n in exported.ui[path.stem]["nodes"]}
        for node in wf["nodes"]:
            saved, now = node.get("widgets_values") or [], loaded[node["id"]].get("widgets_values") or []
            if node["type"].startswith("Wan22MG"):
                assert now[:len(saved)] == saved, (path.name, node["type"], saved, now)
        api = exported.api[path.stem]
        assert by_class(api, "SaveVideo") and by_class(api, "Wan22MGSampler")
        # The web extension shows only the widgets that apply.
        loader = api[by_class(api, "Wan22MGModelLoader")]["inputs"]
        hidden = set(exported.hidden[path.stem])
        if loader["gpus"] == 1:
            assert {"ulysses_size", "cfg_parallel", "dit_fsdp", "t5_fsdp"} <= hidden, (path.name, hidden)
        else:
            assert "ulysses_size" not in hidden and "offload" in hidden, (path.name, hidden)   # dit_fsdp on
        assert ("length" in exported.sampler_hidden[path.stem]) == (loader["task"] == "s2v-14B"), path.name
        if "4-step LoRA" in path.stem:    # ComfyUI's template path: LoRA per expert, euler 4 steps cfg 1
            loras = [n for n in wf["nodes"] if n["type"] == "Wan22MGLoRA"]
            assert len(loras) == 2, path.name
            for n in loras:
                (entry,) = n["properties"]["models"]
                assert entry["directory"] == "loras" and entry["name"] == n["widgets_values"][0]
                assert entry["url"].startswith("https://huggingface.co/Comfy-Org/") and entry["url"].endswith(entry["name"])
            # ComfyUI's template files on the loader, each with its download entry
            (loader_node,) = [n for n in wf["nodes"] if n["type"] == "Wan22MGModelLoader"]
            offered = {m["name"]: m for m in loader_node["properties"]["models"]}
            kind = "t2v" if "T2V" in path.stem else "i2v"
            for name in (f"wan2.2_{kind}_high_noise_14B_fp8_scaled.safetensors",
                         f"wan2.2_{kind}_low_noise_14B_fp8_scaled.safetensors",
                         "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan_2.1_vae.safetensors"):
                assert name in loader.values() and offered[name]["url"].endswith(name), (path.name, name)
            sampler = api[by_class(api, "Wan22MGSampler")]["inputs"]
            router = api[by_class(api, "Wan22MGExpertRouter")]["inputs"]
            assert (sampler["sampler"], sampler["steps"], sampler["shift"]) == ("euler", 4, 5.0)
            assert (router["guidance_high_noise"], router["guidance_low_noise"], router["switch_step"]) == (1.0, 1.0, 2)
    assert exported.snapped in ([4, 4], [6, 6]), exported.snapped     # 24 heads: 5 is not a valid degree
    assert exported.status_line == "no workers running"               # from GET /wan22mg/status
    # #11: typing "wan" in the node search lists our nodes among ComfyUI's own Wan nodes
    ours = {"Wan2.2 Multi-GPU Model Loader", "Wan2.2 Multi-GPU Prompt", "Wan2.2 Multi-GPU Sampler",
            "Wan2.2 Multi-GPU Frames", "Wan2.2 Multi-GPU Expert Router", "Wan2.2 Multi-GPU Speech (S2V)",
            "Wan2.2 Multi-GPU Release GPUs"}
    assert ours <= set(exported.search_wan), exported.search_wan
    assert "WanImageToVideo" in exported.search_wan, exported.search_wan
    assert exported.page_errors == [] and exported.console_errors == [], (exported.page_errors,
                                                                          exported.console_errors)


# ------------------------------------------------------------------------------------------ runs
@pytest.mark.parametrize("name", [p.stem for p in WORKFLOWS])
def test_shipped_workflow_runs_to_an_mp4(comfy, exported, name):
    prompt = tiny(exported.api[name], name)
    task = prompt[by_class(prompt, "Wan22MGModelLoader")]["inputs"]["task"]
    run = run_ok(comfy, prompt, timeout=600)
    files = [f for f in comfy.client.files(run.prompt_id) if f["filename"].endswith(".mp4")]
    assert len(files) == 1, files
    import av

    with av.open(io.BytesIO(comfy.client.download(files[0]))) as container:
        video = container.streams.video[0]
        frames = [f for f in container.decode(video=0)]
        assert video.codec_context.name == "h264"
        assert len(frames) >= 1 and frames[0].width > 0
        assert round(float(video.average_rate)) == FPS[task]
        if task != "s2v-14B":
            assert len(frames) == TINY["length"]
        if task in ("t2v-A14B", "ti2v-5B"):
            assert (frames[0].width, frames[0].height) == (TINY["width"], TINY["height"])
        if task == "s2v-14B":
            assert len(container.streams.audio) == 1


def test_new_seed_reuses_the_warm_group(comfy, exported):
    first = run_ok(comfy, tiny(exported.api[T2V_1GPU], "reuse", seed=1234))
    before = status(comfy)
    prompt = tiny(exported.api[T2V_1GPU], "reuse", seed=1235)
    # Previews on for this prompt only (ComfyUI's per-prompt override of --preview-method).
    run = run_ok(comfy, prompt, extra_data={"preview_method": "latent2rgb"})
    after = status(comfy)
    loader = by_class(prompt, "Wan22MGModelLoader")
    assert loader in run.first("execution_cached")["nodes"]      # ComfyUI kept the loader's handle
    assert after["loads"] == before["loads"], (before, after)    # ...and the group stayed loaded
    group = next(g for g in after["groups"] if g["task"] == "t2v-A14B" and g["layout"].startswith("1 "))
    assert group["plan"].startswith("plan: ~") and "GiB RAM" in group["plan"], group   # memory plan (CPU ranks)
    print(f"group start {group['load_s']:.1f} s; prompts {first.seconds:.1f} s then {run.seconds:.1f} s warm")
    # Per-step progress on the sampler node, and the phase texts of the run.
    sampler = by_class(prompt, "Wan22MGSampler")
    steps = [d["value"] for t, d in run.events if t == "progress" and d["node"] == sampler]
    assert steps and steps[-1] == TINY["steps"] and all(d["max"] == TINY["steps"]
                                                        for t, d in run.events if t == "progress")
    phases = [d["phase"] for t, d in run.events if t == "wan22mg.progress"]
    assert {"encode", "denoise", "decode"} <= set(phases), phases
    # Issue 5: one latent preview per step as ComfyUI's binary preview message (event 1 =
    # PREVIEW_IMAGE, then format 1 = JPEG; event 3 is the progress text); none with the server's
    # default --preview-method none.
    def previews(r):
        return [m[4:] for m in r.binary if m[:4] == (1).to_bytes(4, "big")]

    assert previews(first) == [] and any(m[:4] == (3).to_bytes(4, "big") for m in first.binary)
    jpegs = previews(run)
    assert len(jpegs) == TINY["steps"] and all(m[:4] == (1).to_bytes(4, "big") for m in jpegs)
    from PIL import Image

    assert Image.open(io.BytesIO(jpegs[-1][4:])).format == "JPEG"


def test_interrupt_mid_sampling_then_next_prompt_works(comfy, exported):
    prompt = tiny(exported.api[T2V_1GPU], "interrupt", steps=400, seed=7)
    sampler = by_class(prompt, "Wan22MGSampler")
    sent = []

    def interrupt_after_first_step(typ, data, client, prompt_id):
        if typ == "progress" and data.get("node") == sampler and not sent:
            sent.append(client.post("/interrupt", {"prompt_id": prompt_id}))

    loads = status(comfy)["loads"]
    run = comfy.client.run(prompt, timeout=300, on_event=interrupt_after_first_step)
    assert sent and run.first("execution_interrupted") is not None, run.describe()
    last = max(d["value"] for t, d in run.events if t == "progress")
    assert last < 400
    run_ok(comfy, tiny(exported.api[T2V_1GPU], "after-interrupt", seed=8))
    assert status(comfy)["loads"] == loads            # cancelled, not killed: same group


def test_broken_checkpoint_is_a_clear_error_and_the_server_keeps_serving(comfy, exported):
    prompt = tiny(exported.api[T2V_1GPU], "broken")
    prompt[by_class(prompt, "Wan22MGModelLoader")]["inputs"]["checkpoint"] = comfy.broken
    run = comfy.client.run(prompt, timeout=300)
    err = run.first("execution_error")
    assert err is not None, run.describe()
    assert err["node_type"] == "Wan22MGModelLoader"
    assert "diffusion_pytorch_model-00002-of-00003.safetensors" in err["exception_message"], err["exception_message"]
    assert comfy.server.alive()
    run_ok(comfy, tiny(exported.api[T2V_1GPU], "after-broken", seed=9))


def test_a_path_outside_models_wan22_is_refused(comfy, exported):
    prompt = tiny(exported.api[T2V_1GPU], "path")
    prompt[by_class(prompt, "Wan22MGModelLoader")]["inputs"]["checkpoint"] = "../../../etc"
    run = comfy.client.run(prompt)
    assert run.rejected is not None and "value_not_in_list" in json.dumps(run.rejected), run.describe()


def _frames(comfy, prompt, tag):
    """Run `prompt` with SaveImage on the decoded frames (lossless PNG) -> uint8 array [F,H,W,3]."""
    import numpy as np
    from PIL import Image

    p = copy.deepcopy(prompt)
    decode = by_class(p, "Wan22MGDecode")
    for k in [k for k, v in p.items() if v["class_type"] in ("CreateVideo", "SaveVideo")]:
        del p[k]
    p["90"] = {"class_type": "SaveImage", "inputs": {"images": [decode, 0], "filename_prefix": f"tests/{tag}"}}
    run = run_ok(comfy, p, timeout=600)
    files = sorted((f for f in comfy.client.files(run.prompt_id) if f["filename"].endswith(".png")),
                   key=lambda f: f["filename"])
    return np.stack([np.asarray(Image.open(io.BytesIO(comfy.client.download(f))).convert("RGB")) for f in files])


def test_two_cpu_ranks_give_the_one_rank_video(comfy, exported):
    """The 2-GPU workflow's layout (Ulysses 2 + DiT/T5 FSDP) on 2 gloo ranks vs 1 rank, same seed.
    Both decode to uint8 on rank 0; the sums inside attention and the FSDP all-gathers differ only
    in float32 rounding, so a pixel may move by one 8-bit level at a rounding boundary."""
    import numpy as np

    one = _frames(comfy, tiny(exported.api[T2V_1GPU], "r1", seed=31), "r1")
    two = _frames(comfy, tiny(exported.api[T2V_2GPU], "r2", seed=31), "r2")
    assert one.shape == two.shape == (TINY["length"], TINY["height"], TINY["width"], 3)
    diff = np.abs(one.astype(int) - two.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())
    assert np.abs(one.astype(int) - _frames(comfy, tiny(exported.api[T2V_1GPU], "r1b", seed=32),
                                            "r1b").astype(int)).max() > 1      # the check can fail


# ------------------------------------------------------------------------------------------ native sockets
def _without_video_output(prompt: dict) -> dict:
    p = copy.deepcopy(prompt)
    for k in [k for k, v in p.items() if v["class_type"] in ("CreateVideo", "SaveVideo")]:
        del p[k]
    return p


def _saved_tensors(comfy, name: str):
    """What Wan22MGTestSaveTensors wrote: IMAGE [F, H, W, 3] float32."""
    from safetensors.torch import load_file

    return load_file(str(comfy.base / "output" / "tests" / f"{name}.safetensors"))["images"]


def _saved_latent(comfy, run, node_id: str):
    """The LATENT a SaveLatent node of `run` wrote (LoadLatent's reading: latent_tensor as is)."""
    from safetensors.torch import load_file

    item = comfy.client.history_outputs(run.prompt_id)[node_id]["latents"][0]
    path = comfy.base / "output" / item["subfolder"] / item["filename"]
    return path, load_file(str(path))["latent_tensor"]


@pytest.fixture(scope="module")
def native_decode(comfy, exported):
    """One t2v run whose result goes to our Frames node, to ComfyUI's VAEDecode and VAEDecodeTiled
    (VAE file from the same tiny weights), to our Frames node again as a native LATENT, and to
    SaveLatent. Frames are saved unquantized."""
    p = _without_video_output(tiny(exported.api[T2V_1GPU], "native", seed=21))
    sampler, decode, loader = (by_class(p, c) for c in ("Wan22MGSampler", "Wan22MGDecode", "Wan22MGModelLoader"))
    p["100"] = {"class_type": "VAELoader", "inputs": {"vae_name": VAE_FILE}}
    p["101"] = {"class_type": "VAEDecode", "inputs": {"samples": [sampler, 1], "vae": ["100", 0]}}
    p["102"] = {"class_type": "VAEDecodeTiled", "inputs": {"samples": [sampler, 1], "vae": ["100", 0],
                "tile_size": 64, "overlap": 32, "temporal_size": 8, "temporal_overlap": 4}}
    p["103"] = {"class_type": "Wan22MGDecode", "inputs": {"samples": [sampler, 1], "engine": [loader, 0]}}
    for nid, (src, name) in {"110": (decode, "ours"), "111": ("101", "native"), "112": ("102", "tiled"),
                             "113": ("103", "ours_from_latent")}.items():
        p[nid] = {"class_type": "Wan22MGTestSaveTensors", "inputs": {"images": [src, 0], "name": name}}
    p["120"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 1], "filename_prefix": "tests/sampled"}}
    run = run_ok(comfy, p)
    path, latent = _saved_latent(comfy, run, "120")
    return SimpleNamespace(run=run, latent_path=path, latent=latent,
                           **{n: _saved_tensors(comfy, n) for n in ("ours", "native", "tiled", "ours_from_latent")})


def test_native_vae_decode_of_our_latent_gives_our_frames(native_decode):
    """Our LATENT is in ComfyUI's Wan 2.1 format: ComfyUI's VAE (same weights, fp32) decodes it to
    our frames. Ours are 8-bit, truncated as the official code does (the engine returns uint8
    video); ComfyUI's are float32: ours = floor(native * 255) up to float32 noise (1e-3 level) at
    the level boundaries."""
    ours, native = native_decode.ours, native_decode.native
    assert native_decode.latent.shape == (1, 16, 2, 8, 8)              # 5 frames, 64x64: Wan 2.1 latent
    assert ours.shape == native.shape == (TINY["length"], TINY["height"], TINY["width"], 3)
    diff = native * 255 - ours * 255
    assert diff.min() >= -1e-3 and diff.max() < 1 + 1e-3, (diff.min(), diff.max())
    assert (torch.floor(native * 255 + 1e-3) != ours * 255).float().mean() < 0.01
    # our Frames node decodes a native LATENT on the workers the same way (one level at most: the
    # LATENT's float32 round trip may cross a rounding boundary)
    assert (native_decode.ours_from_latent * 255 - ours * 255).abs().max() <= 1.0 + 1e-3
    # the check can fail: a latent mapped without the Wan 2.1 mean/std decodes to something else
    assert (native * 255 - native.flip(0) * 255).abs().max() > 1


def test_native_vae_decode_tiled_runs_on_our_latent(native_decode):
    tiled = native_decode.tiled
    assert tiled.shape == native_decode.native.shape and tiled.isfinite().all()
    assert (tiled - native_decode.native).abs().mean() < 0.05     # tiles blend; same picture


def test_clip_text_encode_conditioning_equals_our_prompt_node(comfy, exported):
    """CLIPTextEncode with ComfyUI's Wan umT5 (tiny file, fp32, test-only loader for its dims) ->
    our sampler gives our Prompt node's latent. ComfyUI pads to 512 tokens and zeroes the padding;
    the sampler keeps the real rows, as our encoder does. Tolerance 1e-5: the same fp32 weights,
    the attention over 512 masked positions instead of 32 sums in another order."""
    # Both under the tiny text_len (32 tokens; ComfyUI does not cut prompts, the official pipeline does)
    text, negative = "a cat walks in the park", "The Quick brown fox"
    base = _without_video_output(tiny(exported.api[T2V_1GPU], "cond", seed=22))
    for k in [k for k, v in base.items() if v["class_type"] in ("Wan22MGDecode",)]:
        del base[k]
    sampler, encode = by_class(base, "Wan22MGSampler"), by_class(base, "Wan22MGTextEncode")
    base[encode]["inputs"].update(prompt=text, negative_prompt=negative)
    base["120"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 1], "filename_prefix": "tests/cond"}}
    ours = _saved_latent(comfy, run_ok(comfy, base), "120")[1]

    native = copy.deepcopy(base)
    del native[encode], native[sampler]["inputs"]["text"]
    native["130"] = {"class_type": "Wan22MGTestTinyUMT5Loader", "inputs": {"clip_name": TE_FILE}}
    native["131"] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["130", 0]}}
    native["132"] = {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["130", 0]}}
    native[sampler]["inputs"].update(positive=["131", 0], negative=["132", 0])
    theirs = _saved_latent(comfy, run_ok(comfy, native), "120")[1]
    assert ours.shape == theirs.shape == (1, 16, 2, 8, 8)
    err = float((ours - theirs).abs().max() / ours.abs().max())
    print(f"CLIPTextEncode vs Prompt node: max |diff| / max |latent| = {err:.2e}")
    assert err < 1e-5, err
    # the check can fail: another negative prompt moves the latent far beyond the tolerance
    native["132"]["inputs"]["text"] = "a dog"
    other = _saved_latent(comfy, run_ok(comfy, native), "120")[1]
    assert float((ours - other).abs().max() / ours.abs().max()) > 1e-3


def test_saved_latent_refined_at_denoise_half_on_one_and_two_ranks(comfy, exported, native_decode):
    """SaveLatent -> LoadLatent -> our sampler (denoise 0.5) on the 1-GPU layout and on the 2-GPU
    one (Ulysses 2 + FSDP, gloo): the same latent. Tolerance 1e-4 of the latent's range: the two
    layouts sum attention and all-gather shards in a different float32 order over 3 steps."""
    shutil.copyfile(native_decode.latent_path, comfy.base / "input" / "wan_start.latent")
    out = {}
    for layout in ("1gpu", "2gpu"):
        p = _without_video_output(tiny(exported.api[T2V_1GPU if layout == "1gpu" else T2V_2GPU], f"v2v{layout}", seed=23))
        for k in [k for k, v in p.items() if v["class_type"] == "Wan22MGDecode"]:
            del p[k]
        sampler = by_class(p, "Wan22MGSampler")
        p["140"] = {"class_type": "LoadLatent", "inputs": {"latent": "wan_start.latent"}}
        p[sampler]["inputs"].update(latent_image=["140", 0], denoise=0.5, width=640, height=640, length=81)
        p["141"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 1], "filename_prefix": f"tests/v2v{layout}"}}
        out[layout] = _saved_latent(comfy, run_ok(comfy, p), "141")[1]
    start = native_decode.latent
    assert out["1gpu"].shape == start.shape          # the size came from the latent, not the widgets
    scale = float(start.abs().max())
    print(f"denoise 0.5, 1 vs 2 ranks: max |diff| / max |latent| = "
          f"{float((out['1gpu'] - out['2gpu']).abs().max()) / scale:.2e}")
    assert float((out["1gpu"] - out["2gpu"]).abs().max()) < 1e-4 * scale
    assert float((out["1gpu"] - start).abs().max()) > 1e-2 * scale      # it did refine the latent


def test_dead_group_is_restarted_on_the_next_prompt(comfy, exported):
    prompt = tiny(exported.api[T2V_1GPU], "dead", seed=11)
    run_ok(comfy, prompt)
    st = status(comfy)
    group = next(g for g in st["groups"] if g["task"] == "t2v-A14B" and g["layout"].startswith("1 "))
    pid = group["ranks"]["ranks"][0]["pid"]
    os.kill(pid, 9)
    deadline = time.time() + 30
    while time.time() < deadline and _pid_alive(pid):
        time.sleep(0.2)
    prompt = tiny(exported.api[T2V_1GPU], "dead", seed=12)
    run = comfy.client.run(prompt, timeout=300)
    if not run.ok:      # the death may be noticed by this prompt: it fails naming the rank...
        err = run.first("execution_error")
        assert err is not None and "rank 0" in err["exception_message"], run.describe()
        run = run_ok(comfy, prompt)     # ...and the next one starts a new group
    assert status(comfy)["loads"] == st["loads"] + 1


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_release_node_ends_its_group(comfy, exported):
    prompt = tiny(exported.api[TI2V_1GPU], "release", seed=3)
    run_ok(comfy, prompt)

    def ti2v_layouts():
        return sorted(g["layout"] for g in status(comfy)["groups"] if g["task"] == "ti2v-5B")

    before = ti2v_layouts()
    one = [layout for layout in before if layout.startswith("1 ")]
    assert len(one) == 1, before
    loader = by_class(prompt, "Wan22MGModelLoader")
    release = {loader: prompt[loader], "99": {"class_type": "Wan22MGRelease", "inputs": {"engine": [loader, 0]}}}
    run_ok(comfy, release)
    assert ti2v_layouts() == [layout for layout in before if layout != one[0]]    # only that group ended


def test_free_ends_every_group_and_the_next_prompt_reloads(comfy, exported):
    assert status(comfy)["groups"], "earlier tests left no group to free"
    code, _ = comfy.client.post("/free", {"unload_models": True, "free_memory": True})
    assert code == 200
    deadline = time.time() + 60
    while time.time() < deadline and status(comfy)["groups"]:
        time.sleep(0.3)
    st = status(comfy)
    assert st["groups"] == [], st
    run_ok(comfy, tiny(exported.api[T2V_1GPU], "after-free", seed=5))
    assert status(comfy)["loads"] == st["loads"] + 1
