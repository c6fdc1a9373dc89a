"""Let PyPI's (CUDA-built) torchvision import next to a CPU-only torch, for the ComfyUI test server.

ComfyUI v0.33 cannot start without torchvision (comfy/ldm/cosmos/model.py imports it), and PyPI only
ships CUDA builds for Linux. Installed with --no-deps beside torch+cpu, its C++ extension fails to
load, `torchvision.extension._has_ops()` is False, and `import torchvision` dies in
`torchvision/_meta_registrations.py` ("operator torchvision::nms does not exist") because that module
registers fake kernels for ops that were never defined.

scripts/comfy_setup.sh installs this file with a .pth line into the ComfyUI test venv only. The finder
replaces the two registration modules with empty ones, and only when the C++ ops did not load; with
a working torchvision it does nothing. Pure-Python torchvision (transforms, models, io) then works.
"""
import importlib.abc
import importlib.machinery
import sys

_STUBBED = ("torchvision._meta_registrations", "torchvision._autograd_registrations")


class _EmptyLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__doc__ = "empty stand-in: torchvision C++ ops are unavailable on this CPU-only venv"


class _NoOpsFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _STUBBED:
            return None
        ext = sys.modules.get("torchvision.extension")
        if ext is None or ext._has_ops():
            return None
        return importlib.machinery.ModuleSpec(fullname, _EmptyLoader())


if not any(type(f).__name__ == "_NoOpsFinder" for f in sys.meta_path):
    sys.meta_path.insert(0, _NoOpsFinder())
