"""The layer rules of docs/architecture.md, checked on every module's imports (AST, no import run).

- `wan_core` never imports ComfyUI (`comfy`, `comfy_extras`, `comfy_api`, `server`, `folder_paths`,
  `nodes`, `execution`): the engine runs without it (CLI, workers, tests).
- `wan_core/models/` is single-device math: no `torch.distributed`, and nothing from the layers
  above it (`loading`, `pipeline`, `distributed`, `runtime`).
- `wan_core/distributed/` receives modules and plans as arguments: no `models`, `loading`,
  `pipeline` or `runtime`.
- `wan_core/loading/` turns files into parameters: no `pipeline`, `distributed` or `runtime`.
Function-level imports count as much as module-level ones. The checker is shown to catch planted
violations in a temporary tree, so the test on the real tree can fail.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

COMFY = ("comfy", "comfy_extras", "comfy_api", "server", "folder_paths", "nodes", "execution")
# (package the rule applies to, forbidden module prefixes)
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("wan_core", COMFY),
    ("wan_core.models", ("torch.distributed", "wan_core.loading", "wan_core.pipeline",
                         "wan_core.distributed", "wan_core.runtime")),
    ("wan_core.distributed", ("wan_core.models", "wan_core.loading", "wan_core.pipeline",
                              "wan_core.runtime")),
    ("wan_core.loading", ("wan_core.pipeline", "wan_core.distributed", "wan_core.runtime")),
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the file; `from a import b` gives both
    `a` and `a.b` (b may be a submodule)."""
    name = module_name(path, root)
    is_pkg = path.name == "__init__.py"
    package = name.split(".") if is_pkg else name.split(".")[:-1]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names if a.name != "*"]
    return out


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(root: Path) -> list[str]:
    found = []
    for path in sorted((root / "wan_core").rglob("*.py")):
        name = module_name(path, root)
        for line, mod in imported_modules(path, root):
            for package, forbidden in RULES:
                if not _under(name, package):
                    continue
                for bad in forbidden:
                    if _under(mod, bad):
                        found.append(f"{path.relative_to(root)}:{line}: {name} imports {mod} "
                                     f"({package} must not import {bad})")
    return sorted(set(found))


def test_the_repository_keeps_its_layers():
    assert violations(REPO) == []


def test_the_demo_does_not_import_the_cli():
    """The CLI runs the demo's job (cli.cmd_demo); the demo only builds it: no import circle."""
    mods = {m for _, m in imported_modules(REPO / "wan_core" / "demo.py", REPO)}
    assert not any(_under(m, "wan_core.cli") for m in mods), mods


PLANTED = {
    "wan_core/__init__.py": "",
    "wan_core/config.py": "import folder_paths\n",
    "wan_core/models/__init__.py": "",
    "wan_core/models/dit.py": ("import torch\n"
                               "from ..config import X\n"          # allowed
                               "from .layers import Y\n"           # allowed
                               "def load():\n"
                               "    from ..loading.checkpoint import load_dit\n"),
    "wan_core/models/t5.py": "from torch import distributed\n",
    "wan_core/models/vae.py": "import torch.distributed as dist\n",
    "wan_core/models/wav.py": "from wan_core import pipeline\n",
    "wan_core/distributed/__init__.py": "",
    "wan_core/distributed/fsdp.py": "from ..models.dit import WanModel\nfrom ..config import Z\n",
    "wan_core/loading/__init__.py": "",
    "wan_core/loading/vae.py": "from ..models.vae import V\nfrom ..pipeline.text import T\n",
    "wan_core/pipeline/__init__.py": "",
    "wan_core/pipeline/engine.py": "import comfy.model_management\nfrom ..loading import facts\n",
}


@pytest.fixture()
def planted(tmp_path) -> Path:
    for rel, text in PLANTED.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_the_checker_catches_planted_violations(planted):
    found = violations(planted)
    expected = {
        ("wan_core/config.py:1", "folder_paths"),
        ("wan_core/models/dit.py:5", "wan_core.loading"),         # function-level import
        ("wan_core/models/t5.py:1", "torch.distributed"),          # from torch import distributed
        ("wan_core/models/vae.py:1", "torch.distributed"),
        ("wan_core/models/wav.py:1", "wan_core.pipeline"),         # from wan_core import pipeline
        ("wan_core/distributed/fsdp.py:1", "wan_core.models"),
        ("wan_core/loading/vae.py:2", "wan_core.pipeline"),
        ("wan_core/pipeline/engine.py:1", "comfy"),
    }
    for where, bad in expected:
        assert any(f.startswith(where + ":") and f"must not import {bad})" in f for f in found), \
            (where, bad, found)
    # Allowed imports are not reported: config and layers from models, config from distributed,
    # models from loading, loading from pipeline.
    assert not any(f.startswith(("wan_core/models/dit.py:2", "wan_core/models/dit.py:3",
                                 "wan_core/distributed/fsdp.py:2", "wan_core/loading/vae.py:1",
                                 "wan_core/pipeline/engine.py:2")) for f in found), found
