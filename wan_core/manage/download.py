"""`python -m wan_core download TASK [--set official|comfy] [--dir DIR]`.

Through the `huggingface_hub` client: `HfApi.model_info(files_metadata=True)` lists each repository
at its current commit with every file's size and hash (sha256 for LFS files, the git blob id for
small ones); the files are then fetched at that commit with the client's `get_hf_file_metadata` +
`http_get` (its retries, progress bar, Range resume, redirects, auth headers). HF_ENDPOINT, HF_TOKEN
and HF_HUB_OFFLINE act as huggingface_hub documents them.

Resumable: bytes go to `<root>/.wan22-partial/<path>.part` and are resumed from there (HTTP Range) by
the client within a run and by the next run after an interruption. A file reaches its real name only
once its size and hash match the hub's (an atomic rename), and then enters the manifest. So a
`verify` never accepts a half-written file. A file already there is kept when its size and hash
match (hashed again only when it changed since it was recorded), else fetched again.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO
from urllib.parse import urlparse

from ..config import Task
from ..errors import WanEngineError
from .manifest import (OFFICIAL_MANIFEST, FileRecord, Manifest, comfy_manifest_path, content_ok,
                       git_blob_sha1, sha256_file)
from .sets import (COMFY_FILES, OFFICIAL_REPOS, destination, download_command, official_needed,
                   parse_set)

PARTIAL_DIR = ".wan22-partial"


class DownloadError(WanEngineError):
    """A download could not be done (names the repository/file/folder and the fix)."""


@dataclass(frozen=True)
class Planned:
    rel: str                # path under the root
    repo: str
    repo_path: str
    size: int
    sha256: Optional[str]
    git_sha1: Optional[str]
    revision: str


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e6:.2f} MB"


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _hub_error(exc: Exception, repo: str, what: str = "") -> DownloadError:
    """One line for each way the hub can refuse."""
    from huggingface_hub import errors as E

    where = f"{repo}{(' ' + what) if what else ''} on {_endpoint()}"
    if isinstance(exc, E.OfflineModeIsEnabled):
        return DownloadError(f"HF_HUB_OFFLINE is set: cannot list or fetch {where}; unset it to download, "
                             "or check the files already here with `python -m wan_core verify DIR`")
    if isinstance(exc, E.GatedRepoError):
        return DownloadError(f"{where} is gated: accept its license on the website and set HF_TOKEN")
    if isinstance(exc, E.RepositoryNotFoundError):
        return DownloadError(f"repository {repo} not found on {_endpoint()} (or it is private: set HF_TOKEN; "
                             "check HF_ENDPOINT)")
    if isinstance(exc, E.RevisionNotFoundError):
        return DownloadError(f"revision not found: {where}")
    if isinstance(exc, (E.EntryNotFoundError, E.RemoteEntryNotFoundError)):
        return DownloadError(f"file not found: {where}; the repository changed, please report it")
    if isinstance(exc, E.HfHubHTTPError):
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return DownloadError(f"the hub refused {where}: {first}")
    return DownloadError(f"cannot reach {where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                         " (check the network, HF_ENDPOINT or a proxy)")


def _listing(repo: str, token) -> tuple[str, dict]:
    """(commit sha, {path: sibling}) of `repo` at main."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=_endpoint(), token=token).model_info(repo, revision="main", files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise _hub_error(exc, repo) from None
    return info.sha, {s.rfilename: s for s in (info.siblings or [])}


def plan_files(task: Task, file_set: str, token=None) -> list[Planned]:
    """What `task` needs from the hub, with sizes and hashes."""
    out = []
    if file_set == "official":
        repo = OFFICIAL_REPOS[task]
        sha, files = _listing(repo, token)
        needed = official_needed(task, list(files))
        if not needed:
            raise DownloadError(f"{repo} on {_endpoint()} holds none of the files {task.value} needs")
        groups = [(repo, sha, [(p, p) for p in needed], files)]
    else:
        by_repo: dict[str, list] = {}
        for f in COMFY_FILES[task]:
            by_repo.setdefault(f.repo, []).append((f.rel, f.repo_path))
        groups = []
        for repo, items in by_repo.items():
            sha, files = _listing(repo, token)
            for _, repo_path in items:
                if repo_path not in files:
                    raise DownloadError(f"file {repo_path} is not in {repo} (commit {sha[:12]}) on "
                                        f"{_endpoint()}; the repository changed, please report it")
            groups.append((repo, sha, items, files))
    for repo, sha, items, files in groups:
        for rel, repo_path in items:
            s = files[repo_path]
            lfs = s.lfs
            size = lfs.size if lfs else s.size
            if size is None:
                raise DownloadError(f"the hub gave no size for {repo}/{repo_path}; cannot check it")
            out.append(Planned(rel=rel, repo=repo, repo_path=repo_path, size=int(size),
                               sha256=lfs.sha256 if lfs else None,
                               git_sha1=None if lfs else s.blob_id, revision=sha))
    return out


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".wan22-probe-", dir=str(root))
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DownloadError(f"cannot write to {root}: {exc.strerror or exc}; pick a writable --dir") from None


def _manifest_path(task: Task, file_set: str, root: Path) -> Path:
    return root / OFFICIAL_MANIFEST if file_set == "official" else comfy_manifest_path(root, task.value)


def _open_part(path: Path):
    """The partial file, opened to append (the client resumes at its size)."""
    return open(path, "ab")


def _fetch(p: Planned, part: Path, token) -> None:
    """Bytes of `p` appended to `part` (resumed from its current size) by the hub client."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(p.repo, p.repo_path, revision=p.revision, endpoint=_endpoint())
    try:
        meta = get_hf_file_metadata(url, token=token, endpoint=_endpoint())
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(exc, p.repo, p.repo_path) from None
    if meta.size is not None and meta.size != p.size:
        raise DownloadError(f"{p.repo}/{p.repo_path}: the hub lists {p.size} bytes but serves {meta.size}; "
                            "run the download again")
    headers = build_hf_headers(token=token)
    location = meta.location or url
    if urlparse(location).netloc != urlparse(url).netloc:
        headers.pop("authorization", None)     # never send the token off the hub (as the client does)
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > p.size:
        part.unlink()
        have = 0
    with _open_part(part) as fh:
        http_get(location, fh, resume_size=have, headers=headers, expected_size=p.size,
                 displayed_filename=p.rel)


def download(task: "Task | str", file_set: str = "official", dir_: Optional[str] = None, *,
             token=None, out: TextIO = sys.stderr) -> Path:
    """Fetch what `task` needs; returns the root (the checkpoint folder, or the models folder)."""
    task = Task.parse(task)
    file_set = parse_set(file_set)
    root = destination(task, file_set, dir_)
    _check_writable(root)
    man_path = _manifest_path(task, file_set, root)
    try:
        manifest = Manifest.load(man_path) if man_path.is_file() else None
    except (ValueError, TypeError, OSError):
        manifest = None                         # unreadable: every file is checked again
    if manifest is not None and _offline():
        return _offline_check(task, file_set, root, manifest, man_path, out)
    planned = plan_files(task, file_set, token)
    manifest = Manifest(task=task.value, file_set=file_set, endpoint=_endpoint(),
                        files=[f for f in (manifest.files if manifest else [])
                               if any(f.path == p.rel for p in planned)])
    for p in planned:
        manifest.revisions[p.repo] = p.revision
    todo: list[Planned] = []
    for p in planned:
        dest = root / p.rel
        rec = FileRecord(path=p.rel, repo=p.repo, repo_path=p.repo_path, size=p.size, sha256=p.sha256,
                         git_sha1=p.git_sha1)
        old = manifest.record(p.rel)
        if dest.is_file():
            st = dest.stat()
            unchanged = (old is not None and old.size == p.size and old.mtime_ns == st.st_mtime_ns
                         and old.sha256 == p.sha256 and old.git_sha1 == p.git_sha1)
            if unchanged or content_ok(dest, rec):
                rec.mtime_ns = st.st_mtime_ns
                manifest.put(rec)
                continue
            print(f"{p.rel}: size or hash differs from the hub's: fetching it again", file=out)
        todo.append(p)
    partial_root = root / PARTIAL_DIR
    need = sum(p.size - _part_size(partial_root / (p.rel + ".part")) for p in todo)
    free = shutil.disk_usage(root).free
    if need > free:
        raise DownloadError(f"not enough disk space in {root}: {task.value} ({file_set}) needs {_gb(need)} "
                            f"more, {_gb(free)} free; free some space or pass another --dir")
    total = sum(p.size for p in planned)
    print(f"{task.value} ({file_set}) from {_endpoint()}: {len(planned)} files, {_gb(total)}; "
          f"{len(planned) - len(todo)} already here, {len(todo)} to fetch ({_gb(need)}) into {root}", file=out)
    for i, p in enumerate(todo, 1):
        part = partial_root / (p.rel + ".part")
        dest = root / p.rel
        print(f"[{i}/{len(todo)}] {p.repo}/{p.repo_path} ({_gb(p.size)})"
              + (f", resuming at {_gb(part.stat().st_size)}" if part.exists() and part.stat().st_size else ""),
              file=out)
        try:
            _fetch(p, part, token)
        except KeyboardInterrupt:
            _save_quietly(manifest, man_path)
            raise DownloadError(f"interrupted while fetching {p.rel}: {i - 1} of {len(todo)} files done; "
                                f"{_gb(_part_size(part))} kept in {partial_root}; run the same command to "
                                "resume") from None
        except DownloadError:
            _save_quietly(manifest, man_path)
            raise
        except OSError as exc:
            _save_quietly(manifest, man_path)
            if exc.errno == errno.ENOSPC:
                raise DownloadError(f"disk full while writing {p.rel} into {root}: "
                                    f"{_gb(_part_size(part))} of {_gb(p.size)} written (kept in "
                                    f"{partial_root}, not usable); free some space and run the same "
                                    "command to resume") from None
            raise DownloadError(f"fetching {p.repo}/{p.repo_path} failed: {exc}; run the same command "
                                "to resume") from None
        except Exception as exc:  # noqa: BLE001 - transfer errors of the client
            _save_quietly(manifest, man_path)
            raise _hub_error(exc, p.repo, p.repo_path) from None
        rec = FileRecord(path=p.rel, repo=p.repo, repo_path=p.repo_path, size=p.size, sha256=p.sha256,
                         git_sha1=p.git_sha1)
        if not content_ok(part, rec):
            got = sha256_file(part) if p.sha256 else git_blob_sha1(part)
            part.unlink(missing_ok=True)
            _save_quietly(manifest, man_path)
            raise DownloadError(f"{p.repo}/{p.repo_path} arrived corrupted (hash {got[:12]}..., the hub says "
                                f"{(p.sha256 or p.git_sha1)[:12]}...); deleted; run the same command again")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
        rec.mtime_ns = dest.stat().st_mtime_ns
        manifest.put(rec)
        try:
            manifest.save(man_path)
        except OSError as exc:
            raise DownloadError(f"cannot write the manifest {man_path}: {exc.strerror or exc} (disk full?); "
                                "free some space and run the same command") from None
    _save_quietly(manifest, man_path)
    _clean_partial(partial_root)
    where = (f"--ckpt_dir {root}" if file_set == "official" else f"ComfyUI models folder {root}")
    print(f"done: {task.value} ({file_set}) complete and checked; use {where}; manifest {man_path}", file=out)
    return root


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _offline_check(task: Task, file_set: str, root: Path, manifest: Manifest, man_path: Path,
                   out: TextIO) -> Path:
    """HF_HUB_OFFLINE: like the hub client, use what is here without asking the hub, when the
    manifest's files are all present with their recorded sizes; else one line saying what is missing."""
    missing = [r.path for r in manifest.files if not (root / r.path).is_file()
               or (root / r.path).stat().st_size != r.size]
    if missing or not manifest.files:
        raise DownloadError(f"HF_HUB_OFFLINE is set and {root} lacks {len(missing)} file(s) of its manifest "
                            f"(first: {missing[0] if missing else 'none recorded'}); unset HF_HUB_OFFLINE to "
                            "download them")
    print(f"HF_HUB_OFFLINE is set: not asking {_endpoint()}; the {len(manifest.files)} files of {man_path} are "
          f"here with their sizes (python -m wan_core verify {root} checks their hashes)", file=out)
    return root


def _save_quietly(manifest: Manifest, path: Path) -> None:
    """Record the finished files on the way out of a failure; a full disk may refuse even that (the
    files are then checked again by the next run)."""
    try:
        manifest.save(path)
    except OSError:
        pass


def _part_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _clean_partial(partial_root: Path) -> None:
    """Remove empty folders of the partial area (other tasks' partial files stay)."""
    if not partial_root.is_dir():
        return
    for d in sorted((p for p in partial_root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            d.rmdir()
        except OSError:
            pass
    try:
        partial_root.rmdir()
    except OSError:
        pass


__all__ = ["download", "plan_files", "DownloadError", "download_command", "PARTIAL_DIR"]
