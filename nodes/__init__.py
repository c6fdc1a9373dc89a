"""ComfyUI layer of the pack: node schemas (ComfyUI's V3 `comfy_api`), conversions, progress and
interrupt relay, the engine registry and the HTTP route. Thin: every node converts its inputs to
wan_core's typed values and calls the engine.

Importing this package imports neither torch nor ComfyUI. The node families (`*_nodes.py`,
gathered by `extension.py`) import `comfy_api` and load only inside ComfyUI (or with its source on
sys.path); `requests.py`, `convert.py`, `registry.py`, `progress.py` and `checkpoints.py` do not.
"""

# The node ids are the identity of saved workflows: never rename them.
NODE_IDS = ("Wan22MGModelLoader", "Wan22MGExpertRouter", "Wan22MGTextEncode", "Wan22MGAudioEncode",
            "Wan22MGSampler", "Wan22MGDecode", "Wan22MGRelease", "Wan22MGLoRA")
