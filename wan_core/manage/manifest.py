"""The manifest a download writes: every file with where it came from and the hub's size and hash.

Official set: `<checkpoint folder>/wan22_manifest.json`. Comfy set: `<models>/.wan22/<task>-comfy.json`.
Paths inside are relative to the manifest's root (the checkpoint folder, or the models folder), so a
moved folder still verifies. Written atomically (temp file + rename) after every finished file, so an
interrupted download leaves a manifest that lists only complete, checked files.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

OFFICIAL_MANIFEST = "wan22_manifest.json"
COMFY_MANIFEST_DIR = ".wan22"
FORMAT = 1


def comfy_manifest_path(models_dir: Path, task: str) -> Path:
    return Path(models_dir) / COMFY_MANIFEST_DIR / f"{task}-comfy.json"


@dataclass
class FileRecord:
    path: str                      # relative to the manifest root
    repo: str
    repo_path: str
    size: int
    sha256: Optional[str] = None   # LFS files: the hub's sha256 of the content
    git_sha1: Optional[str] = None  # small (non-LFS) files: the hub's git blob id
    mtime_ns: Optional[int] = None  # when it was last checked (a changed file is hashed again)


@dataclass
class Manifest:
    task: str
    file_set: str
    endpoint: str
    revisions: dict = field(default_factory=dict)       # repo -> commit sha
    files: list = field(default_factory=list)           # FileRecord
    format: int = FORMAT
    written: str = ""

    def record(self, path: str) -> Optional[FileRecord]:
        return next((f for f in self.files if f.path == path), None)

    def put(self, rec: FileRecord) -> None:
        self.files = [f for f in self.files if f.path != rec.path] + [rec]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.written = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        data = asdict(self)
        fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=str(path.parent))
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"manifest format {data.get('format')!r} is not {FORMAT}")
        files = [FileRecord(**f) for f in data.pop("files", [])]
        return cls(files=files, **data)


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file's content (what the hub reports as blobId for non-LFS files)."""
    size = Path(path).stat().st_size
    h = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_ok(path: Path, rec: FileRecord) -> bool:
    """Size and hash of `path` against its record."""
    try:
        if path.stat().st_size != rec.size:
            return False
    except OSError:
        return False
    if rec.sha256:
        return sha256_file(path) == rec.sha256
    if rec.git_sha1:
        return git_blob_sha1(path) == rec.git_sha1
    return True
