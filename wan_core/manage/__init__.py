"""The model manager: `python -m wan_core download | verify | status`.

- `sets.py`: which files each task needs, per file set (`official`: the Wan-AI repositories in the
  official layout; `comfy`: the files of ComfyUI's own Wan2.2 templates, into ComfyUI's folders).
- `download.py`: fetches them through the `huggingface_hub` client (HF_ENDPOINT, HF_TOKEN and
  HF_HUB_OFFLINE as that library documents), resumable, checked against the hub's sizes and hashes,
  recorded in a manifest (`manifest.py`).
- `verify.py`: checks folders/files against their manifest (sizes, sha256), recognises the layout
  (the engine's own readers in `loading/`) and says which tasks can run; `status` does it for
  every place the loader looks.
"""
