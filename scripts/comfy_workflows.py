#!/usr/bin/env python3
"""Regenerate the example workflows (example_workflows/*.json, ComfyUI UI format) through the real
frontend, and their template-browser thumbnails (example_workflows/*.jpg).

    python scripts/comfy_workflows.py [--screenshots docs/images] [--only NAME]
    python scripts/comfy_workflows.py --thumbnails-only          # Pillow only, no ComfyUI needed

ComfyUI lists every `example_workflows/<name>.json` of a custom node in its template browser
(`GET /workflow_templates`, app/custom_node_manager.py) and the frontend shows `<name>` as the title
and `<name>.jpg` beside it as the thumbnail: the file names are the titles. Every model node gets
`properties.models` ([{name, url, directory}]), which the frontend reads for missing downloads.

Starts the ComfyUI that scripts/comfy_setup.sh installed, with this pack linked in and empty
stand-in checkpoint folders named like the official downloads (so the loader's checkpoint widget
offers those names), then for each workflow below: builds the graph from its API-format definition
with the frontend's own `app.loadApiJson`, places the nodes, adds a Note saying which files go
where, and saves `app.graph.serialize()`. Every value is the task's official default; the 2-GPU
versions use the official multi-GPU layout (`--dit_fsdp --t5_fsdp --ulysses_size 2`).
Run it with the project's Python (Playwright); tests/comfy checks the result.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "comfy"))

import comfyui_harness as harness  # noqa: E402
from wan_core.config import TASKS, Task  # noqa: E402

OFFICIAL_FOLDERS = {Task.T2V_A14B: "Wan2.2-T2V-A14B", Task.I2V_A14B: "Wan2.2-I2V-A14B",
                    Task.TI2V_5B: "Wan2.2-TI2V-5B", Task.S2V_14B: "Wan2.2-S2V-14B"}
PROMPTS = {
    Task.T2V_A14B: "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely "
                   "on a spotlighted stage.",
    Task.I2V_A14B: "Summer beach vacation style, a white cat wearing sunglasses sits on a surfboard. "
                   "The fluffy-furred feline gazes directly at the camera with a relaxed expression. "
                   "Blurred beach scenery forms the background featuring crystal-clear waters, distant "
                   "green hills, and a blue sky dotted with white clouds.",
    Task.TI2V_5B: "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely "
                  "on a spotlighted stage.",
    Task.S2V_14B: "A person is talking to the camera in a bright room, natural head motion.",
}
# ComfyUI's own 4-step templates (video_wan2_2_14B_t2v/i2v.json): the lightx2v LoRAs, one per expert.
LORA_URL = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/loras/"
LORAS_4STEP = {Task.T2V_A14B: ("wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors",
                               "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors"),
               Task.I2V_A14B: ("wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
                               "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors")}
IMAGE = "example.png"                 # ships with ComfyUI (input/example.png)
AUDIO = "wan22_s2v_speech.wav"        # the user's own speech recording, in ComfyUI/input/


def note_text(task: Task, gpus: int) -> str:
    spec = TASKS[task]
    folder = OFFICIAL_FOLDERS[task]
    if spec.moe:
        dit = "  high_noise_model/  and  low_noise_model/   (config.json + shards + index.json each)"
    else:
        dit = "  config.json, diffusion_pytorch_model-*.safetensors + .index.json"
    extra = "\n  wav2vec2-large-xlsr-53-english/" if task == Task.S2V_14B else ""
    if gpus > 1:
        layout = (f"{gpus} GPUs: Ulysses {gpus} + DiT and T5 FSDP, the official torchrun "
                  f"--nproc_per_node={gpus} ... --dit_fsdp --t5_fsdp --ulysses_size {gpus}. More GPUs: "
                  "raise gpus and ulysses_size together (or enable cfg_parallel).")
    elif spec.moe:
        layout = ("1 GPU: the idle MoE expert waits in CPU memory (offload=experts, the official "
                  "--offload_model True): 720p on one 80 GB GPU. Smaller GPUs: offload=blocks.")
    elif task == Task.TI2V_5B:
        layout = "1 GPU: T5 on the CPU (t5_cpu), the official 24 GB recipe (RTX 4090)."
    else:
        layout = ("1 GPU: T5 on the CPU (t5_cpu); the 14B model needs an 80 GB GPU. Smaller GPUs: "
                  "offload=blocks.")
    inputs = {Task.I2V_A14B: f"\nPut the start image in ComfyUI/input/ and pick it in Load Image.",
              Task.TI2V_5B: "\nText-to-video as shipped; connect a Load Image to the sampler's image for "
                            "image-to-video.",
              Task.S2V_14B: f"\nPut the reference image and the speech audio ({AUDIO}) in "
                            "ComfyUI/input/."}.get(task, "")
    return (f"Wan2.2 {task.value}: where the files go\n\n"
            f"ComfyUI/models/wan22/{folder}/   (the Hugging Face download Wan-AI/{folder}, unchanged)\n"
            f"{dit}\n  models_t5_umt5-xxl-enc-bf16.pth\n  {spec.vae_file}\n  google/umt5-xxl/{extra}\n\n"
            f"huggingface-cli download Wan-AI/{folder} --local-dir ComfyUI/models/wan22/{folder}\n\n"
            f"{layout}{inputs}\n\n"
            f"Official defaults: {spec.default_size.replace('*', 'x')}, "
            f"{spec.frame_num} frames{' per clip' if task == Task.S2V_14B else ''} at "
            f"{spec.fps} fps, {spec.sample_steps} steps, shift {spec.sample_shift:g}. An empty "
            "negative prompt uses the official one.")


def lora_4step_workflow(task: Task, gpus: int) -> tuple[dict, dict, dict]:
    """The 4-step LoRA variant, as ComfyUI's own template runs it: the lightx2v LoRA of each expert
    (strength 1), euler, 4 steps, shift 5, guidance 1, switch after step 2, 640x640, 81 frames.
    Returns (API prompt, positions, {node id: properties.models})."""
    p, pos = api_workflow(task, gpus)
    high, low = LORAS_4STEP[task]
    # The template's own single files (fp8_scaled experts, fp8 umT5, 2.1 VAE), from ComfyUI's folders.
    p["1"]["inputs"].update(checkpoint=COMPONENTS, weights="auto", **TEMPLATE_FILES[task])
    p["11"] = {"class_type": "Wan22MGLoRA", "inputs": {"engine": ["1", 0], "lora_name": high,
                                                        "strength": 1.0, "expert": "high_noise"}}
    p["12"] = {"class_type": "Wan22MGLoRA", "inputs": {"engine": ["11", 0], "lora_name": low,
                                                        "strength": 1.0, "expert": "low_noise"}}
    p["4"]["inputs"].update(engine=["12", 0], width=640, height=640, length=81, steps=4, shift=5.0,
                            sampler="euler")
    p["3"]["inputs"].update(guidance_high_noise=1.0, guidance_low_noise=1.0, switch_step=2)
    # Below the Prompt node (520 + 200) with room for the LoRA title bar (drawn above pos).
    pos = dict(pos, **{"11": [0, 770], "12": [0, 930]})
    models = {k: [{"name": name, "url": LORA_URL + name, "directory": "loras"}]
              for k, name in (("11", high), ("12", low))}
    return p, pos, models


COMPONENTS = "(component files only)"      # nodes/checkpoints.COMPONENTS
TEMPLATE_FILES = {   # ComfyUI's video_wan2_2_14B_t2v/i2v.json files, by loader widget
    task: {"dit_high_noise": f"wan2.2_{kind}_high_noise_14B_fp8_scaled.safetensors",
           "dit_low_noise": f"wan2.2_{kind}_low_noise_14B_fp8_scaled.safetensors",
           "text_encoder": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "vae": "wan_2.1_vae.safetensors"}
    for task, kind in ((Task.T2V_A14B, "t2v"), (Task.I2V_A14B, "i2v"))}


def api_workflow(task: Task, gpus: int) -> tuple[dict, dict]:
    """(API prompt, {node id: [x, y]}) with the task's official defaults."""
    spec = TASKS[task]
    w, h = (int(v) for v in spec.default_size.split("*"))
    loader = {"task": task.value, "checkpoint": OFFICIAL_FOLDERS[task], "gpus": gpus,
              "ulysses_size": gpus, "cfg_parallel": False, "dit_fsdp": gpus > 1, "t5_fsdp": gpus > 1,
              "t5_cpu": gpus == 1 and not spec.moe,          # TI2V-5B, S2V-14B
              "offload": "experts" if gpus == 1 and spec.moe else "none",
              "dtype": "bf16", "attention": "auto", "device": "cuda", "gpu_ids": ""}
    p = {
        "1": {"class_type": "Wan22MGModelLoader", "inputs": loader, "_meta": {"title": "Wan2.2 model (worker group)"}},
        "2": {"class_type": "Wan22MGTextEncode",
              "inputs": {"prompt": PROMPTS[task], "negative_prompt": ""}},
        "4": {"class_type": "Wan22MGSampler", "inputs": {
            "engine": ["1", 0], "text": ["2", 0], "width": w, "height": h, "length": spec.frame_num,
            "steps": spec.sample_steps, "shift": spec.sample_shift, "sampler": "unipc", "seed": 42}},
        "5": {"class_type": "Wan22MGDecode", "inputs": {"latent": ["4", 0]}},
        "6": {"class_type": "CreateVideo", "inputs": {"images": ["5", 0], "fps": ["5", 1]}},
        "7": {"class_type": "SaveVideo", "inputs": {"video": ["6", 0], "filename_prefix": f"wan22/{task.value}",
                                                   "format": "mp4", "format.codec": "h264"}},
    }
    pos = {"1": [0, 0], "2": [0, 520], "4": [430, 180], "5": [810, 180], "6": [810, 320], "7": [1130, 180],
           "note": [-420, 0]}
    if spec.moe:
        low, high = spec.guide_scale
        p["3"] = {"class_type": "Wan22MGExpertRouter", "inputs": {
            "boundary": spec.boundary, "guidance_high_noise": high, "guidance_low_noise": low}}
        p["4"]["inputs"]["experts"] = ["3", 0]
        pos["3"] = [430, 0]
    if task in (Task.I2V_A14B, Task.S2V_14B):
        p["8"] = {"class_type": "LoadImage", "inputs": {"image": IMAGE}}
        p["4"]["inputs"]["image"] = ["8", 0]
        pos["8"] = [430, 560]
    if task == Task.S2V_14B:
        p["9"] = {"class_type": "LoadAudio", "inputs": {"audio": AUDIO}}
        p["10"] = {"class_type": "Wan22MGAudioEncode", "inputs": {
            "audio": ["9", 0], "frames_per_clip": spec.frame_num, "max_clips": 0, "start_from_ref": False}}
        p["4"]["inputs"]["audio"] = ["10", 0]
        p["6"]["inputs"]["audio"] = ["5", 2]
        pos["9"], pos["10"] = [-420, 520], [-420, 720]
    return p, pos


TASK_TITLES = {Task.T2V_A14B: "T2V-A14B text to video", Task.I2V_A14B: "I2V-A14B image to video",
               Task.TI2V_5B: "TI2V-5B text-image to video", Task.S2V_14B: "S2V-14B speech to video"}
OUT = REPO / "example_workflows"


def workflow_name(task: Task, gpus: int, lora4: bool = False) -> str:
    """File name = title in ComfyUI's template browser. Sorted A-Z they group by task, then the
    official path before the 4-step LoRA one, 1 GPU first."""
    return f"Wan2.2 {TASK_TITLES[task]}{', 4-step LoRA' if lora4 else ''}, {gpus} GPU{'s' if gpus > 1 else ''}"


# -- properties.models ----------------------------------------------------------------------------
# ComfyUI's own Wan2.2 templates download their single files from these URLs (comfyui-workflow-
# templates); a widget naming one of these files gets its entry. Official folders point at the
# Wan-AI repository (a folder is not one download: the frontend lists it, the note says the command).
_REPACKAGED = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/"
COMFY_FILE_URLS = [
    _REPACKAGED + "diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
    _REPACKAGED + "diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
    _REPACKAGED + "diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
    _REPACKAGED + "diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
    _REPACKAGED + "diffusion_models/wan2.2_ti2v_5B_fp16.safetensors",
    _REPACKAGED + "diffusion_models/wan2.2_s2v_14B_fp8_scaled.safetensors",
    "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/text_encoders/"
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    _REPACKAGED + "vae/wan_2.1_vae.safetensors",
    _REPACKAGED + "vae/wan2.2_vae.safetensors",
    _REPACKAGED + "audio_encoders/wav2vec2_large_english_fp16.safetensors",
    _REPACKAGED + "loras/wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors",
    _REPACKAGED + "loras/wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors",
    _REPACKAGED + "loras/wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
    _REPACKAGED + "loras/wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",
]
COMFY_FILES = {url.rsplit("/", 1)[1]: {"name": url.rsplit("/", 1)[1], "url": url,
                                       "directory": url.split("/split_files/")[1].split("/")[0]}
               for url in COMFY_FILE_URLS}
OFFICIAL_REPOS = {folder: f"https://huggingface.co/Wan-AI/{folder}" for folder in OFFICIAL_FOLDERS.values()}
# Nodes whose widgets name model files or folders (the LoRA nodes get theirs in export()).
MODEL_NODE_TYPES = ("Wan22MGModelLoader",)


def models_for(inputs: dict) -> list[dict]:
    """properties.models of a node from its widget values (API-format inputs)."""
    out = []
    for value in inputs.values():
        if not isinstance(value, str):
            continue
        name = value.replace("\\", "/").rsplit("/", 1)[-1]
        if name in COMFY_FILES:
            out.append(dict(COMFY_FILES[name]))
        elif value in OFFICIAL_REPOS:
            out.append({"name": value, "url": OFFICIAL_REPOS[value], "directory": "wan22"})
    return out


def add_model_properties(wf: dict, prompt: dict) -> None:
    """Set properties.models on every model node of the UI workflow `wf` (ids as in `prompt`)."""
    for node in wf["nodes"]:
        api = prompt.get(str(node["id"]))
        if api is not None and api["class_type"] in MODEL_NODE_TYPES:
            node.setdefault("properties", {})["models"] = models_for(api["inputs"])


# -- thumbnails -----------------------------------------------------------------------------------
_THUMB_COLORS = [(64, 156, 255), (84, 196, 140), (250, 190, 70), (236, 96, 98)]


def thumbnail(task: Task, gpus: int, path: Path, lora4: bool = False) -> None:
    """A title card (the frontend shows it at ~300 px): task, what it does, one tile per GPU."""
    from PIL import Image, ImageDraw, ImageFont

    def font(size: int, bold: bool = True):
        name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
        try:
            return ImageFont.truetype(f"/usr/share/fonts/truetype/dejavu/{name}", size)
        except OSError:
            return ImageFont.load_default()

    w, h = 512, 384
    img = Image.new("RGB", (w, h), (22, 27, 38))
    d = ImageDraw.Draw(img)
    short, what = TASK_TITLES[task].split(" ", 1)
    d.text((32, 30), "Wan2.2", fill=(150, 160, 180), font=font(30, bold=False))
    d.text((32, 72), short, fill=(235, 240, 250), font=font(64))
    d.text((32, 152), what, fill=(200, 210, 225), font=font(34, bold=False))
    tile = 70
    for i in range(gpus):
        x0 = 32 + i * (tile + 16)
        d.rounded_rectangle([x0, 250, x0 + tile, 250 + tile * 1.3], radius=10,
                            fill=_THUMB_COLORS[i % len(_THUMB_COLORS)])
    d.text((32 + gpus * (tile + 16) + 8, 282), f"{gpus} GPU{'s' if gpus > 1 else ''}",
           fill=(235, 240, 250), font=font(40))
    if lora4:
        d.rounded_rectangle([330, 24, 490, 70], radius=10, fill=(250, 190, 70))
        d.text((410, 47), "4-step LoRA", fill=(22, 27, 38), font=font(22), anchor="mm")
    img.save(path, quality=90)


def write_thumbnails(folder: Path = OUT) -> list[Path]:
    """<name>.jpg for each workflow in `folder`, from its loader's task and gpus widgets."""
    written = []
    for wf_path in sorted(folder.glob("*.json")):
        wf = json.loads(wf_path.read_text())
        loader = next((n for n in wf["nodes"] if n["type"] == "Wan22MGModelLoader"), None)
        if loader is None:
            continue
        values = loader["widgets_values"]
        values = values if isinstance(values, dict) else dict(zip(("task", "checkpoint", "gpus"), values))
        out = wf_path.with_suffix(".jpg")
        lora4 = any(n["type"] == "Wan22MGLoRA" for n in wf["nodes"])
        thumbnail(Task.parse(values["task"]), int(values["gpus"]), out, lora4)
        written.append(out)
    return written



ALL = [(task, gpus, False) for task in (Task.T2V_A14B, Task.I2V_A14B, Task.TI2V_5B, Task.S2V_14B)
       for gpus in (1, 2)] + [(task, gpus, True) for task in LORAS_4STEP for gpus in (1, 2)]

_LAYOUT_JS = """
async ([pos, note, noteTitle, models]) => {
  for (const [id, entries] of Object.entries(models || {})) {   // the frontend offers these downloads
    const n = app.graph.getNodeById(+id);
    if (n) n.properties = {...(n.properties || {}), models: entries};
  }
  for (const [id, xy] of Object.entries(pos)) {
    if (id === 'note') continue;
    const n = app.graph.getNodeById(+id);
    if (n) n.pos = [xy[0], xy[1]];
  }
  const nn = LiteGraph.createNode('Note');
  nn.title = noteTitle;
  nn.pos = pos.note;
  app.graph.add(nn);
  nn.widgets[0].value = note;      // after add: the widget value store is keyed by node id
  nn.size = [400, 480];
  for (const [type, width] of [['Wan22MGDecode', 250], ['Wan22MGSampler', 320], ['Wan22MGModelLoader', 370]]) {
    for (const n of app.graph.nodes.filter((n) => n.type === type)) n.size = [width, n.computeSize()[1]];
  }
  app.graph.setDirtyCanvas(true, true);
}
"""


def export(frontend: harness.Frontend, task: Task, gpus: int, lora4: bool = False) -> dict:
    if lora4:
        prompt, pos, models = lora_4step_workflow(task, gpus)
        high, low = LORAS_4STEP[task]
        files = TEMPLATE_FILES[task]
        layout = (f"{gpus} GPUs: Ulysses {gpus} + DiT and T5 FSDP." if gpus > 1 else
                  "1 GPU: the idle expert waits in CPU memory (offload=experts).")
        note = (f"Wan2.2 {task.value}, 4-step LoRA: ComfyUI's own template files (the loader and "
                "LoRA nodes offer the downloads)\n\n"
                f"ComfyUI/models/diffusion_models/  {files['dit_high_noise']}, {files['dit_low_noise']}\n"
                f"ComfyUI/models/text_encoders/  {files['text_encoder']}\n"
                f"ComfyUI/models/vae/  {files['vae']}\n"
                f"ComfyUI/models/loras/  {high}, {low}\n\n"
                "Or an official download in ComfyUI/models/wan22/<folder>: pick it as checkpoint and "
                "set the file widgets to (from checkpoint).\n\n"
                f"{layout} As the template: euler, 4 steps, shift 5, guidance 1 (one forward per "
                "step, no negative prompt), high-noise expert for steps 0-2 (router switch_step 2), "
                "640x640, 81 frames.")
    else:
        (prompt, pos), models = api_workflow(task, gpus), {}
        note = note_text(task, gpus)
    frontend.load(prompt, workflow_name(task, gpus, lora4) + ".json")
    frontend.js(_LAYOUT_JS, [pos, note, "Read me: where the model files go", models])
    frontend.page.wait_for_timeout(300)
    wf = frontend.serialize()
    add_model_properties(wf, prompt)
    return wf


_RUN_JS = """
async ([overrides]) => {
  const api = window.comfyAPI.api.api;
  window.__run = {done: false, ok: null, error: null};
  api.addEventListener('execution_success', () => { window.__run = {done: true, ok: true}; });
  api.addEventListener('execution_error', (e) => { window.__run = {done: true, ok: false, error: e.detail}; });
  for (const n of app.graph.nodes) {
    for (const [name, value] of Object.entries(overrides[n.type] || {})) {
      const w = n.widgets.find((x) => x.name === name);
      if (w) { w.value = value; w.callback?.(value); }
    }
  }
  await app.queuePrompt(0, 1);
}
"""


def demo_run_screenshot(frontend: harness.Frontend, path: str) -> None:
    """The T2V 2-GPU example run on the tiny test checkpoint (2 CPU ranks): progress, the status
    line and the video player as a user sees them after a run."""
    name = workflow_name(Task.T2V_A14B, 2) + ".json"
    wf = json.loads((OUT / name).read_text())
    frontend.load(wf, name)
    overrides = {"Wan22MGModelLoader": {"checkpoint": "t2v-A14B", "device": "cpu", "dtype": "fp32"},
                 "Wan22MGSampler": {"width": 320, "height": 192, "length": 17, "steps": 8}}
    frontend.js(_RUN_JS, [overrides])
    frontend.page.wait_for_function("() => window.__run.done", timeout=600_000)
    if not frontend.js("() => window.__run.ok"):
        raise RuntimeError(f"demo run failed: {frontend.js('() => window.__run.error')}")
    frontend.page.wait_for_function(
        "() => (window.__wan22mgStatus?.groups || []).length > 0", timeout=30_000)
    frontend.page.wait_for_timeout(4000)          # the status poll and the video preview
    frontend.js("() => app.extensionManager.setting.set('Comfy.Minimap.Visible', false)")
    frontend.fit_view()
    frontend.screenshot(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--thumbnails-only", action="store_true",
                    help="only (re)write the .jpg thumbnails of the workflows in --out (Pillow, no ComfyUI)")
    ap.add_argument("--screenshots", help="also save PNGs of the workflows in this folder")
    ap.add_argument("--only", action="append", help="workflow name(s) to regenerate")
    ap.add_argument("--demo-run", metavar="PNG", help="also run the T2V 2-GPU example on the tiny "
                    "checkpoint (../shared/wan22_tiny, 2 CPU ranks) and save a screenshot after the run")
    args = ap.parse_args()
    if args.thumbnails_only:
        for path in write_thumbnails(Path(args.out)):
            print(f"wrote {path}")
        return 0
    comfy, python, why = harness.locate()
    if comfy is None:
        print(why, file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="wan22-export-"))
    try:
        harness.make_base_dir(base, harness.tiny_root() if args.demo_run else None)
        for task, folder in OFFICIAL_FOLDERS.items():   # stand-ins so the combo offers the names
            sub = base / "models" / "wan22" / folder / ("high_noise_model" if TASKS[task].moe else "")
            sub.mkdir(parents=True, exist_ok=True)
            (sub / "config.json").write_text("{}")
        (base / "input" / AUDIO).write_bytes(b"")
        (base / "models" / "loras").mkdir(parents=True, exist_ok=True)
        for names in LORAS_4STEP.values():     # stand-ins so the LoRA combos offer the names
            for name in names:
                (base / "models" / "loras" / name).write_bytes(b"")
        for files in TEMPLATE_FILES.values():  # ... and the loader's component-file combos
            for name in files.values():
                folder = base / "models" / COMFY_FILES[name]["directory"]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(b"")
        shutil.copyfile(comfy / "input" / IMAGE, base / "input" / IMAGE)
        server = harness.Server(comfy, python, base).start()
        try:
            with harness.Frontend(server.url) as fe:
                for task, gpus, lora4 in ALL:
                    name = workflow_name(task, gpus, lora4)
                    if args.only and name not in args.only:
                        continue
                    wf = export(fe, task, gpus, lora4)
                    missing = fe.missing_nodes(wf)
                    if missing or fe.page_errors:
                        print(f"{name}: missing {missing}, page errors {fe.page_errors}", file=sys.stderr)
                        return 1
                    Path(args.out, name + ".json").write_text(json.dumps(wf, indent=2, ensure_ascii=False) + "\n")
                    print(f"wrote {args.out}/{name}.json ({len(wf['nodes'])} nodes)")
                    thumbnail(task, gpus, Path(args.out, name + ".jpg"), lora4)
                    if args.screenshots:
                        fe.js("() => app.extensionManager.setting.set('Comfy.Minimap.Visible', false)")
                        fe.fit_view()
                        shot = Path(args.screenshots, name + ".png")
                        shot.parent.mkdir(parents=True, exist_ok=True)
                        fe.screenshot(str(shot))
                        print(f"wrote {shot}")
                if args.demo_run:
                    demo_run_screenshot(fe, args.demo_run)
                    print(f"wrote {args.demo_run}")
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
