"""ComfyUI's conventions for a custom-node pack, checked on the files (no ComfyUI needed; the real
server's listing of the workflows is tests/comfy/test_server.py::test_template_browser_lists_the_workflows).

1. Comfy Registry metadata in pyproject.toml. `comfy node validate` (comfy-cli) is not run here: the
   package pulls 57 distributions (~340 MB: uv, ruff, GitPython, imageio-ffmpeg, ...) into the test
   venv for checks that fit in this file. The rules below are comfy-cli 1.23's
   (registry/config_parser.py: OS and accelerator classifiers, version specifiers, license form;
   command validate: a version, and ruff's S102/S307/E702 = no exec, no eval, no `;`-joined
   statements) plus the registry's published specification (node id form, LICENSE file, Icon, URLs).
   `comfy node validate` 1.23.0 was run by hand on this pyproject and passed (notes/first.md).
2. Template browser: ComfyUI lists `example_workflows/<name>.json` and the frontend shows `<name>` as
   the title with `<name>.jpg` as thumbnail; every model node carries `properties.models`.
"""
from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

from conftest import missing

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT, COMFY = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))

# comfy-cli 1.23 registry/config_parser.py
VALID_OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
VALID_ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                      "GPU :: Apple Metal"}
VERSION_PART = re.compile(r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$")


# ------------------------------------------------------------------------------------ registry
def test_node_id_and_version():
    name = PROJECT["name"]
    # registry: < 100 chars; letters, digits, '-', '_', '.'; no doubled specials; starts with a letter
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name), name
    assert not re.search(r"[._-]{2}", name), name
    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"]), PROJECT["version"]   # X.Y.Z


def test_license_file_matches_the_declared_license():
    declared = PROJECT["license"]
    assert declared == "Apache-2.0"                       # SPDX expression (PEP 639), read by comfy-cli as text
    assert PROJECT.get("license-files") == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:3] == ["Apache", "License", "Version"] and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text          # the whole license, not a stub


def test_classifiers_os_and_gpu():
    classifiers = PROJECT["classifiers"]
    os_values = [c[len("Operating System :: "):] for c in classifiers if c.startswith("Operating System :: ")]
    accel = [c[len("Environment :: "):] for c in classifiers if c.startswith("Environment ::")]
    assert os_values and all(v.startswith(VALID_OS_PREFIXES) for v in os_values), os_values
    assert accel and set(accel) <= VALID_ACCELERATORS, accel
    # the runtime needs Linux (AF_UNIX control sockets, /dev/shm, NCCL); GPUs are NVIDIA (NCCL, FA2-4)
    assert os_values == ["POSIX :: Linux"] and accel == ["GPU :: NVIDIA CUDA"]


def test_tool_comfy_fields():
    assert COMFY["PublisherId"] and COMFY["DisplayName"]
    version = COMFY["requires-comfyui"]
    assert all(VERSION_PART.match(part.strip()) for part in version.split(",")), version
    tested = re.search(r'__version__ = "([^"]+)"',
                       subprocess.run(["tar", "-xzOf", str(_comfy_tarball()), "--wildcards", "*/comfyui_version.py"],
                                      capture_output=True, text=True, check=True).stdout).group(1)
    assert version == f">={tested}", (version, tested)   # the oldest ComfyUI the tests run against
    icon = COMFY["Icon"]
    assert icon.startswith("https://raw.githubusercontent.com/") and icon.endswith("/main/docs/images/icon.png")
    from PIL import Image

    with Image.open(REPO / "docs" / "images" / "icon.png") as img:   # the file the URL serves
        assert img.size[0] == img.size[1] <= 400, img.size


def _comfy_tarball() -> Path:
    import os

    path = Path(os.environ.get("COMFYUI_TARBALL", REPO.parent / "shared" / "comfyui" / "ComfyUI-v0.33.0.tar.gz"))
    if not path.is_file():
        missing(f"no ComfyUI tarball at {path}")
    return path


def test_project_urls():
    urls = PROJECT["urls"]
    for key in ("Repository", "Documentation", "Issues"):
        assert urls[key].startswith("https://github.com/"), key
    assert urls["Issues"] == urls["Repository"] + "/issues"


def _python_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "*.py"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [REPO / f for f in out.split() if (REPO / f).is_file()]


def test_no_exec_eval_or_semicolon_statements():
    """comfy node validate's ruff rules S102 (exec), S307 (eval), E702 (statements joined by `;`)."""
    found = []
    for path in _python_files():
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("exec", "eval"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.func.id}()")
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.OP and tok.string == ";":
                found.append(f"{path.relative_to(REPO)}:{tok.start[0]} ';'")
    assert not found, found


# ------------------------------------------------------------------------------ template browser
def test_workflows_live_where_comfyui_looks():
    assert len(WORKFLOWS) >= 8
    # One folder: a workflow added to the old workflows/ would be missed by every test and by users.
    assert not (REPO / "workflows").exists()
    for path in WORKFLOWS:
        assert re.fullmatch(r"Wan2\.2 [A-Za-z0-9 ,.+()-]+", path.stem), path.name   # a readable title
        thumb = path.with_suffix(".jpg")
        assert thumb.is_file(), f"{path.name} has no thumbnail {thumb.name}"
        assert thumb.read_bytes()[:3] == b"\xff\xd8\xff", thumb.name


def test_titles_sort_by_task_then_gpu_count():
    """The frontend's A-Z sort (localeCompare, numeric): each task's workflows together, each
    variant (official path, 4-step LoRA) together, 1 GPU first."""
    titles = sorted((p.stem for p in WORKFLOWS), key=str.lower)   # ASCII titles: same order as localeCompare
    tasks = [t.split()[1] for t in titles]
    assert tasks == sorted(tasks, key=tasks.index)        # contiguous groups
    variants = [re.sub(r", \d+ GPUs?$", "", t) for t in titles]
    assert variants == sorted(variants, key=variants.index)
    for variant in set(variants):
        gpus = [int(re.search(r"(\d+) GPUs?$", t).group(1)) for t, v in zip(titles, variants) if v == variant]
        assert gpus == sorted(gpus), (variant, gpus)


MODEL_NODES = {"Wan22MGModelLoader", "UNETLoader", "CLIPLoader", "VAELoader", "LoraLoaderModelOnly",
               "AudioEncoderLoader", "Wan22MGLoRA"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_model_nodes_carry_properties_models(path):
    wf = json.loads(path.read_text())
    nodes = [n for n in wf["nodes"] if n["type"] in MODEL_NODES or "Loader" in n["type"] and n["type"].startswith("Wan22MG")]
    assert nodes, f"{path.name}: no model node"
    for node in nodes:
        models = node.get("properties", {}).get("models")
        assert models, f"{path.name}: node {node['id']} ({node['type']}) has no properties.models"
        for m in models:
            assert set(m) >= {"name", "url", "directory"}, m
            assert m["url"].startswith("https://huggingface.co/"), m
            if m["directory"] == "wan22":     # an official folder: its Wan-AI repository, by name
                assert m["url"] == f"https://huggingface.co/Wan-AI/{m['name']}", m
                assert m["name"] in json.dumps(node.get("widgets_values")), (m, node.get("widgets_values"))
            else:                             # a ComfyUI single file: the file's download URL
                assert m["url"].endswith("/" + m["name"]) and "/resolve/" in m["url"], m
