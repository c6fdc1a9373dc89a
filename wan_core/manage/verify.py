"""`python -m wan_core verify PATH...` and `python -m wan_core status`.

A PATH is an official checkpoint folder, a ComfyUI models folder (or any folder a `--set comfy`
download went to), or one ComfyUI single file. For each: every file of the manifest present, its
size and hash right (sha256 for large files, the git blob id for small ones, as the hub reports
them); the layout recognised by the engine's own readers (`loading.detect`, the checkpoint check,
`loading.single_file.inspect_file`); and which tasks can run from it. A missing, truncated or
corrupted file is named with the command that repairs it. Exit status 0 only when nothing is wrong.

A folder without a manifest (downloaded by other means) gets the layout checks only, and says that
its hashes were not checked. `status` runs the same checks on every place the loader looks: the
ComfyUI tree's `models/wan22/*` folders (official) and `models/` (ComfyUI's files), or `--dir`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TextIO

from ..config import Task
from ..errors import WanEngineError
from .manifest import (COMFY_MANIFEST_DIR, OFFICIAL_MANIFEST, FileRecord, Manifest, content_ok,
                       sha256_file)
from .sets import COMFY_FILES, download_command, find_comfy_models_dir, official_folder_name


@dataclass
class Report:
    path: Path
    kind: str                                        # "official", "comfy", "file", "unknown"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    runnable: list[str] = field(default_factory=list)   # "t2v-A14B (official)"
    checked: int = 0
    bad: set = field(default_factory=set)            # paths with a problem

    def problem(self, path: Path, text: str) -> None:
        self.problems.append(text)
        self.bad.add(Path(path))

    @property
    def ok(self) -> bool:
        return not self.problems


def _file_problem(path: Path, rec: FileRecord, repair: str) -> Optional[str]:
    if not path.is_file():
        return f"MISSING {path} (from {rec.repo}/{rec.repo_path}); repair: {repair}"
    size = path.stat().st_size
    if size < rec.size:
        return f"TRUNCATED {path}: {size:,} of {rec.size:,} bytes; repair: {repair}"
    if size != rec.size:
        return f"WRONG SIZE {path}: {size:,} bytes, the hub's file has {rec.size:,}; repair: {repair}"
    if not content_ok(path, rec):
        what = "sha256" if rec.sha256 else "git blob id"
        return f"CORRUPTED {path}: its {what} differs from the hub's; repair: {repair}"
    return None


def _check_manifest(man_path: Path, root: Path, report: Report, out: TextIO) -> Optional[Manifest]:
    try:
        man = Manifest.load(man_path)
    except (ValueError, TypeError, OSError) as exc:
        report.problems.append(f"UNREADABLE manifest {man_path} ({exc}); repair: run the download again")
        return None
    repair = download_command(man.task, man.file_set, root)
    changed = False
    for rec in sorted(man.files, key=lambda r: r.path):
        path = root / rec.path
        print(f"  checking {rec.path} ({rec.size / 1e9:.2f} GB)", file=out)
        problem = _file_problem(path, rec, repair)
        report.checked += 1
        if problem:
            report.problem(path, problem)
            if rec.mtime_ns is not None:     # make `download` hash it again even if mtime is unchanged
                rec.mtime_ns = None
                changed = True
    if changed:
        try:
            man.save(man_path)
        except OSError:
            pass
    return man


def _verify_official(folder: Path, out: TextIO) -> Report:
    from ..loading.detect import detect_task
    from ..loading.check import check_checkpoint

    report = Report(folder, "official")
    man_path = folder / OFFICIAL_MANIFEST
    man = _check_manifest(man_path, folder, report, out) if man_path.is_file() else None
    try:
        task = detect_task(folder)
    except WanEngineError as exc:
        task = Task.parse(man.task) if man else None
        report.problems.append(f"LAYOUT {exc}" + (f"; repair: {download_command(task, 'official', folder)}"
                                                  if task else ""))
        return report
    repair = download_command(task, "official", folder)
    if man is None:
        report.notes.append(f"no {OFFICIAL_MANIFEST}: hashes not checked (to check them against the hub: "
                            f"{repair})")
    elif man.task != task.value:
        report.problems.append(f"{man_path} is for {man.task} but the folder holds {task.value}")
    try:
        check_checkpoint(folder, task)
    except WanEngineError as exc:
        report.problems.append(f"LAYOUT {exc}; repair: {repair}")
    if report.ok:
        report.runnable.append(f"{task.value} (official: --ckpt_dir {folder})")
    return report


def _recognise(path: Path, part: str) -> Optional[str]:
    """Problem text when `path` is not the part it should be (the engine's own reader decides)."""
    from ..loading.single_file import read_header, inspect_file

    try:
        if part.startswith("lora"):
            header, _ = read_header(path)
            if not any("lora" in k.lower() for k in header):
                return f"LAYOUT {path} holds no LoRA weights"
            return None
        expect = "dit" if part.startswith("dit") else part
        inspect_file(path, expect=expect)
    except WanEngineError as exc:
        return f"LAYOUT {exc}"
    return None


def _verify_comfy(models: Path, out: TextIO, only: Optional[list[Path]] = None) -> Report:
    report = Report(models, "comfy")
    manifests = sorted((models / COMFY_MANIFEST_DIR).glob("*-comfy.json")) if (models / COMFY_MANIFEST_DIR).is_dir() else []
    covered: set[str] = set()
    for man_path in manifests:
        man = _check_manifest(man_path, models, report, out)
        if man is not None:
            covered.update(r.path for r in man.files)
    if not manifests:
        report.notes.append(f"no download manifest in {models / COMFY_MANIFEST_DIR}: hashes not checked")
    seen: set[Path] = set()
    for task, files in COMFY_FILES.items():
        present = [f for f in files if (models / f.rel).is_file()]
        if not present and not any(f.rel in covered for f in files):
            continue
        ok = True
        for f in files:
            path = models / f.rel
            if not path.is_file():
                ok = False
                if f.rel in covered:
                    continue          # already reported by the manifest check
                if present:
                    report.notes.append(f"{task.value}: {f.rel} not here ({download_command(task, 'comfy', models)})")
                continue
            if path in seen:
                continue
            seen.add(path)
            problem = _recognise(path, f.part)
            if problem:
                report.problem(path, f"{problem}; repair: {download_command(task, 'comfy', models)}")
        if ok and not any(models / f.rel in report.bad for f in files):
            report.runnable.append(f"{task.value} (comfy: {models})")
    return report


def _verify_file(path: Path, out: TextIO) -> Report:
    report = Report(path, "file")
    # A file of a comfy download: its folder's parent is the models folder with the manifest.
    models = path.parent.parent
    for man_path in sorted((models / COMFY_MANIFEST_DIR).glob("*-comfy.json")) if (models / COMFY_MANIFEST_DIR).is_dir() else []:
        try:
            man = Manifest.load(man_path)
        except (ValueError, TypeError, OSError):
            continue
        rec = man.record(f"{path.parent.name}/{path.name}")
        if rec is not None:
            problem = _file_problem(path, rec, download_command(man.task, man.file_set, models))
            report.checked += 1
            if problem:
                report.problem(path, problem)
            break
    else:
        report.notes.append("not in any download manifest: hash not checked")
    part = next((f.part for files in COMFY_FILES.values() for f in files if f.name == path.name), None)
    if path.is_file():
        from ..loading.single_file import inspect_file

        try:
            if part and part.startswith("lora"):
                problem = _recognise(path, part)
                if problem:
                    report.problems.append(problem)
            else:
                info = inspect_file(path, expect=("dit" if part and part.startswith("dit") else part))
                report.notes.append(info.describe())
        except WanEngineError as exc:
            report.problems.append(f"LAYOUT {exc}")
    elif not report.problems:
        report.problems.append(f"MISSING {path}")
    return report


def verify_path(path: "str | Path", out: TextIO = sys.stdout) -> Report:
    path = Path(path).expanduser().absolute()
    if path.is_file():
        return _verify_file(path, out)
    if not path.is_dir():
        return Report(path, "unknown", problems=[f"MISSING {path}: no such file or folder"])
    if (path / OFFICIAL_MANIFEST).is_file() or (path / "config.json").is_file() or \
            (path / "high_noise_model").is_dir() or (path / "low_noise_model").is_dir():
        return _verify_official(path, out)
    if (path / COMFY_MANIFEST_DIR).is_dir() or any((path / d).is_dir() for d in
                                                   ("diffusion_models", "text_encoders", "vae", "loras")):
        return _verify_comfy(path, out)
    return Report(path, "unknown", problems=[
        f"UNKNOWN {path}: neither an official Wan2.2 checkpoint folder (config.json or high_noise_model/) "
        "nor a ComfyUI models folder (diffusion_models/, text_encoders/, vae/)"])


def print_report(r: Report, out: TextIO) -> None:
    verdict = "OK" if r.ok else f"{len(r.problems)} problem(s)"
    print(f"{r.path} [{r.kind}]: {verdict}" + (f", {r.checked} file(s) hashed" if r.checked else ""), file=out)
    for p in r.problems:
        print(f"  {p}", file=out)
    for n in r.notes:
        print(f"  note: {n}", file=out)
    for t in r.runnable:
        print(f"  runnable: {t}", file=out)


def verify(paths: "list[str] | list[Path]", out: TextIO = sys.stdout) -> int:
    """Report on each place in turn, then the summary line; 0 when nothing is wrong."""
    reports = []
    for p in paths:
        r = verify_path(p, out)
        print_report(r, out)
        reports.append(r)
    return _summary(reports, out)


def _summary(reports: list[Report], out: TextIO) -> int:
    runnable = sorted({t.split(" ")[0] for r in reports for t in r.runnable})
    bad = sum(len(r.problems) for r in reports)
    print(f"tasks runnable: {', '.join(runnable) if runnable else 'none'}; "
          f"{'all good' if not bad else f'{bad} problem(s)'}", file=out)
    return 0 if bad == 0 else 1


def status(dir_: Optional[str] = None, out: TextIO = sys.stdout) -> int:
    """Every place the loader looks (inside a ComfyUI tree), or `dir_` (a models folder)."""
    from ..errors import ConfigError

    models = Path(dir_).expanduser().absolute() if dir_ else find_comfy_models_dir()
    if models is None:
        raise ConfigError("not inside a ComfyUI tree (no folder_paths.py above the current folder or "
                          "this pack): pass --dir MODELS_DIR (the folder with wan22/ or diffusion_models/)")
    if not models.is_dir():
        raise ConfigError(f"{models} does not exist; nothing downloaded there yet "
                          f"(python -m wan_core download TASK --dir ...)")
    places: list[Path] = []
    wan22 = models / "wan22"
    if wan22.is_dir():
        places += sorted(p for p in wan22.iterdir() if p.is_dir() and not p.name.startswith("."))
    if (models / COMFY_MANIFEST_DIR).is_dir() or any((models / f.rel).is_file()
                                                      for files in COMFY_FILES.values() for f in files):
        places.append(models)
    print(f"models folder: {models}", file=out)
    if not places:
        print(f"  nothing found: download with `python -m wan_core download TASK` "
              f"(official into {wan22 / official_folder_name(Task.T2V_A14B)}..., or --set comfy)", file=out)
        print("tasks runnable: none", file=out)
        return 1
    return verify(places, out)


__all__ = ["verify", "verify_path", "status", "Report", "sha256_file"]
