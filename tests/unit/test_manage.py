"""`python -m wan_core download | verify | status` with the real huggingface_hub client against a hub
served on 127.0.0.1 by the test (tests/_fake_hub.py), holding the tiny checkpoints as repositories.

No network beyond 127.0.0.1: HF_ENDPOINT points at the fake hub, and HTTP(S)_PROXY at a closed port
with NO_PROXY=127.0.0.1, so a request to any other host fails the command.
Full disk: a small tmpfs when the test runs as root; otherwise the ENOSPC is produced in-process by
the download's partial-file writer replaced in the test (said in the test's name).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from conftest import REPO
from _fake_hub import FakeHub

sys.path.insert(0, str(REPO / "tests" / "parity"))
from _tiny import task_ckpt  # noqa: E402

T2V = "Wan-AI/Wan2.2-T2V-A14B"
SHARD = "high_noise_model/diffusion_pytorch_model-00001-of-00003.safetensors"
C22 = "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"
C21 = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def hub(tiny_dir, tmp_path_factory):
    from _comfy_files import write_comfy_models

    tmp = tmp_path_factory.mktemp("hub")
    h = FakeHub()
    h.add_folder(T2V, task_ckpt(tiny_dir, "t2v-A14B", tmp / "links"))
    # Files a task does not need: never fetched.
    # One shard made bigger than the client's 10 MB write chunk (header padded with spaces, which
    # safetensors allows), so a cut or an interrupted transfer leaves bytes to resume from.
    h.repos[T2V][SHARD] = pad_safetensors(h.repos[T2V][SHARD], 24 << 20)
    h.repos[T2V].update({"README.md": b"# Wan2.2\n", "assets/logo.png": b"\x89PNG" + b"0" * 5000,
                         "configuration.json": b"{}"})
    models = tmp / "comfy_models"
    write_comfy_models(tiny_dir, models, tasks=["ti2v-5B"])
    for folder in ("diffusion_models", "vae"):
        h.add_folder(C22, models / folder, prefix=f"split_files/{folder}/")
    h.add_folder(C21, models / "text_encoders", prefix="split_files/text_encoders/")
    h.start()
    yield h
    h.stop()


def pad_safetensors(data: bytes, size: int) -> bytes:
    n = int.from_bytes(data[:8], "little")
    header = data[8:8 + n] + b" " * (size - len(data))
    return len(header).to_bytes(8, "little") + header + data[8 + n:]


def env_for(hub: FakeHub, home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), CUDA_VISIBLE_DEVICES="",
               HF_ENDPOINT=hub.endpoint, HF_HOME=str(home / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", ALL_PROXY="http://127.0.0.1:9",
               NO_PROXY="127.0.0.1,localhost", HF_HUB_DISABLE_PROGRESS_BARS="1")
    env.update(extra)
    return env


def cli(hub, tmp_path, *args, timeout=240, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wan_core", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(tmp_path), env=env_for(hub, tmp_path, **extra))


def one_error(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def fetched(hub, since: int) -> list[str]:
    return [p for m, p, _ in hub.log[since:] if m == "GET" and "/resolve/" in p]


def test_download_resume_verify_and_repair(hub, tmp_path):
    """A transfer cut half-way is resumed with a Range request; only the needed files arrive,
    checked and recorded; verify passes; a corrupted byte is found and repaired by the command
    verify names."""
    ck = tmp_path / "Wan2.2-T2V-A14B"
    size = len(hub.repos[T2V][SHARD])
    hub.cut[(T2V, SHARD)] = size // 2
    mark = len(hub.log)
    proc = cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(ck))
    assert proc.returncode == 0, proc.stderr
    ranges = [r for m, p, r in hub.log[mark:] if p.endswith(SHARD) and r]
    assert len(ranges) == 1 and 0 < int(ranges[0][6:-1]) <= size // 2, ranges
    got = sorted(str(p.relative_to(ck)) for p in ck.rglob("*") if p.is_file())
    assert "README.md" not in got and not any(g.startswith("assets") for g in got)
    assert "configuration.json" not in got and ".wan22-partial" not in " ".join(got)
    needed = {k for k in hub.repos[T2V] if k not in ("README.md", "assets/logo.png", "configuration.json")}
    assert set(got) == needed | {"wan22_manifest.json"}
    man = json.loads((ck / "wan22_manifest.json").read_text())
    assert man["revisions"] == {T2V: hub.commit(T2V)} and len(man["files"]) == len(needed)
    shard = next(f for f in man["files"] if f["path"] == SHARD)
    import hashlib
    assert shard["sha256"] == hashlib.sha256(hub.repos[T2V][SHARD]).hexdigest()
    assert (ck / SHARD).read_bytes() == hub.repos[T2V][SHARD]

    ok = cli(hub, tmp_path, "verify", str(ck))
    assert ok.returncode == 0, ok.stdout
    assert "tasks runnable: t2v-A14B; all good" in ok.stdout

    # A second download fetches nothing.
    mark = len(hub.log)
    again = cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(ck))
    assert again.returncode == 0 and fetched(hub, mark) == [], again.stderr

    # One flipped byte in the middle of a shard (same size): found, named, repaired.
    with open(ck / SHARD, "r+b") as fh:
        fh.seek(size // 3)
        b = fh.read(1)
        fh.seek(size // 3)
        fh.write(bytes([b[0] ^ 1]))
    bad = cli(hub, tmp_path, "verify", str(ck))
    assert bad.returncode == 1
    line = next(ln for ln in bad.stdout.splitlines() if "CORRUPTED" in ln)
    assert str(ck / SHARD) in line and "sha256" in line
    repair = line.split("repair: ")[1]
    assert repair == f"python -m wan_core download t2v-A14B --set official --dir {ck}"
    mark = len(hub.log)
    fixed = cli(hub, tmp_path, *repair.split()[3:])
    assert fixed.returncode == 0, fixed.stderr
    assert [p for p in fetched(hub, mark)] == [f"/{T2V}/resolve/{hub.commit(T2V)}/{SHARD}"]
    assert cli(hub, tmp_path, "verify", str(ck)).returncode == 0


def test_truncated_and_missing_files_named(hub, tmp_path):
    ck = tmp_path / "ck"
    assert cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(ck)).returncode == 0
    data = (ck / SHARD).read_bytes()
    (ck / SHARD).write_bytes(data[: len(data) // 2])
    (ck / "Wan2.1_VAE.pth").unlink()
    proc = cli(hub, tmp_path, "verify", str(ck))
    assert proc.returncode == 1
    out = proc.stdout
    assert f"TRUNCATED {ck / SHARD}: {len(data) // 2:,} of {len(data):,} bytes" in out
    assert f"MISSING {ck / 'Wan2.1_VAE.pth'} (from {T2V}/Wan2.1_VAE.pth)" in out
    assert "tasks runnable: none" in out
    # The CLI's own checkpoint check names the command that fetches what is missing.
    gen = cli(hub, tmp_path, "generate", "--task", "t2v-A14B", "--ckpt_dir", str(ck), "--device", "cpu",
              "--size", "64*48", "--frame_num", "5", "--sample_steps", "1")
    line = one_error(gen)
    assert f"to fetch what is missing: python -m wan_core download t2v-A14B --dir {ck}" in line


def test_generate_on_a_missing_folder_prints_the_download_command(hub, tmp_path):
    gone = tmp_path / "nowhere"
    line = one_error(cli(hub, tmp_path, "generate", "--task", "t2v-A14B", "--ckpt_dir", str(gone),
                         "--device", "cpu"))
    assert f"python -m wan_core download t2v-A14B --dir {gone}" in line


def test_comfy_set_into_a_models_folder_and_status(hub, tmp_path):
    models = tmp_path / "models"
    proc = cli(hub, tmp_path, "download", "ti2v-5B", "--set", "comfy", "--dir", str(models))
    assert proc.returncode == 0, proc.stderr
    for rel in ("diffusion_models/wan2.2_ti2v_5B_fp16.safetensors", "vae/wan2.2_vae.safetensors",
                "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors"):
        assert (models / rel).is_file(), rel
    assert (models / ".wan22" / "ti2v-5B-comfy.json").is_file()
    ok = cli(hub, tmp_path, "verify", str(models))
    assert ok.returncode == 0 and "runnable: ti2v-5B (comfy" in ok.stdout, ok.stdout
    st = cli(hub, tmp_path, "status", "--dir", str(models))
    assert st.returncode == 0 and "tasks runnable: ti2v-5B; all good" in st.stdout, st.stdout
    # A file replaced by another kind of model is not recognised as the part it should be.
    vae = models / "vae" / "wan2.2_vae.safetensors"
    shutil.copy(models / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", vae)
    bad = cli(hub, tmp_path, "verify", str(vae))
    assert bad.returncode == 1 and "umT5 text encoder file; expected a Wan VAE file" in bad.stdout, bad.stdout


def test_missing_repository_and_file_reported(hub, tmp_path):
    line = one_error(cli(hub, tmp_path, "download", "i2v-A14B", "--dir", str(tmp_path / "i2v")))
    assert line == (f"error: repository Wan-AI/Wan2.2-I2V-A14B not found on {hub.endpoint} (or it is "
                    "private: set HF_TOKEN; check HF_ENDPOINT)")
    line = one_error(cli(hub, tmp_path, "download", "s2v-14B", "--set", "comfy", "--dir", str(tmp_path / "m")))
    assert "file split_files/diffusion_models/wan2.2_s2v_14B_fp8_scaled.safetensors is not in " \
           f"{C22}" in line
    assert not (tmp_path / "m" / "diffusion_models").exists()


def test_offline_mode(hub, tmp_path):
    """HF_HUB_OFFLINE: nothing asked of the hub; a complete download is used as it is, an empty
    folder is one line."""
    mark = len(hub.log)
    line = one_error(cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(tmp_path / "x"), HF_HUB_OFFLINE="1"))
    assert "HF_HUB_OFFLINE is set" in line and hub.log[mark:] == []
    ck = tmp_path / "ck"
    assert cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(ck)).returncode == 0
    mark = len(hub.log)
    ok = cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(ck), HF_HUB_OFFLINE="1")
    assert ok.returncode == 0 and "HF_HUB_OFFLINE is set: not asking" in ok.stderr, ok.stderr
    assert hub.log[mark:] == []
    (ck / "Wan2.1_VAE.pth").unlink()
    line = one_error(cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(ck), HF_HUB_OFFLINE="1"))
    assert "lacks 1 file(s) of its manifest (first: Wan2.1_VAE.pth)" in line


def test_unknown_task_and_set(hub, tmp_path):
    assert "invalid choice: 'x2v'" in one_error(cli(hub, tmp_path, "download", "x2v"))
    assert "argument --set: invalid choice: 'civitai'" in one_error(
        cli(hub, tmp_path, "download", "t2v-A14B", "--set", "civitai"))


@pytest.fixture
def small_fs(tmp_path):
    """A folder on a tiny filesystem of its own (root: tmpfs), unmounted afterwards."""
    mounts = []

    def make(name: str, size_kb: int, ro: bool = False) -> Optional[Path]:
        """None where mounting is not allowed (not root, or a container without CAP_SYS_ADMIN)."""
        d = tmp_path / name
        d.mkdir()
        opts = f"size={size_kb}k" + (",ro" if ro else "")
        if not IS_ROOT or subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)],
                                         capture_output=True).returncode != 0:
            return None
        mounts.append(d)
        return d

    yield make
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_unwritable_dir(hub, tmp_path, small_fs):
    target = small_fs("ro", 64, ro=True)     # root ignores permission bits: a read-only filesystem
    if target is None and not IS_ROOT:
        target = tmp_path / "locked"
        target.mkdir()
        target.chmod(0o500)
    cases = [target / "ck"] if target is not None else []
    plain = tmp_path / "a_file"
    plain.write_text("not a folder")
    cases.append(plain / "ck")                # under a file: unwritable for anyone
    for where in cases:
        line = one_error(cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(where)))
        assert line.startswith(f"error: cannot write to {where}") and "pick a writable --dir" in line


def test_full_disk_before_and_during_the_download(hub, tmp_path, small_fs):
    # Too small for the task: refused before a byte is fetched.
    tiny = small_fs("tiny", 512)
    if tiny is None:
        pytest.skip("mounting a tmpfs is not allowed here (needs root with CAP_SYS_ADMIN); "
                    "test_enospc_from_a_patched_writer_in_process covers the full disk")
    mark = len(hub.log)
    line = one_error(cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(tiny / "ck")))
    assert line.startswith(f"error: not enough disk space in {tiny / 'ck'}: t2v-A14B (official) needs")
    assert fetched(hub, mark) == []
    # Room at the start, filled by someone else during the big shard: ENOSPC mid-file.
    disk = small_fs("disk", 60 * 1024)

    def fill(repo, name, sent):
        if name == SHARD and sent > 1 << 20 and not (disk / "filler").exists():
            free = shutil.disk_usage(disk).free
            with open(disk / "filler", "wb") as fh:
                try:
                    fh.write(b"\0" * free)
                except OSError:
                    pass

    hub.on_send = fill
    try:
        proc = cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(disk / "ck"))
    finally:
        hub.on_send = None
    line = one_error(proc)
    assert f"error: disk full while writing {SHARD} into {disk / 'ck'}" in line and "resume" in line
    assert not (disk / "ck" / SHARD).exists()
    v = cli(hub, tmp_path, "verify", str(disk / "ck"))
    assert v.returncode == 1 and SHARD not in json.loads((disk / "ck" / "wan22_manifest.json").read_text()).__str__()
    # Space freed: the same command resumes and completes.
    (disk / "filler").unlink()
    assert cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(disk / "ck")).returncode == 0
    assert cli(hub, tmp_path, "verify", str(disk / "ck")).returncode == 0


def test_enospc_from_a_patched_writer_in_process(hub, tmp_path, monkeypatch):
    """The same mid-file ENOSPC without a tmpfs: the partial-file writer is replaced in-process by
    one that raises ENOSPC after 1 MB (simulated full disk, for runs without root)."""
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "ENDPOINT", hub.endpoint)
    from wan_core.manage import download as D

    real_open = D._open_part

    class Full:
        def __init__(self, path):
            self.fh = real_open(path)
            self.n = 0

        def write(self, b):
            if self.n + len(b) > 1 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.n += len(b)
            return self.fh.write(b)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

    monkeypatch.setattr(D, "_open_part", lambda path: Full(path) if path.name.startswith("diffusion") else real_open(path))
    ck = tmp_path / "ck"
    with pytest.raises(D.DownloadError, match=r"^disk full while writing high_noise_model/diffusion_pytorch_model-00001"):
        D.download("t2v-A14B", "official", str(ck))
    assert not (ck / SHARD).exists()
    from wan_core.manage.verify import verify_path

    assert not verify_path(ck, out=open(os.devnull, "w")).ok


def test_interrupted_download_leaves_nothing_verify_accepts_and_resumes(hub, tmp_path):
    ck = tmp_path / "ck"
    started = []

    def slow(repo, name, sent):       # past the client's first 10 MB write: slow, so SIGINT lands mid-file
        if name == SHARD and sent > 12 << 20:
            started.append(sent)
            time.sleep(0.3)

    hub.on_send = slow
    try:
        p = subprocess.Popen([sys.executable, "-m", "wan_core", "download", "t2v-A14B", "--dir", str(ck)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path),
                             env=env_for(hub, tmp_path))
        deadline = time.monotonic() + 120
        while len(started) < 3 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        hub.on_send = None
    proc = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    line = one_error(proc)
    assert line.startswith(f"error: interrupted while fetching {SHARD}") and "run the same command to resume" in line
    assert not (ck / SHARD).exists()
    v = cli(hub, tmp_path, "verify", str(ck))
    assert v.returncode == 1
    kept = (ck / ".wan22-partial" / (SHARD + ".part")).stat().st_size
    assert kept > 0
    mark = len(hub.log)
    assert cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(ck)).returncode == 0
    assert [r for m, pth, r in hub.log[mark:] if pth.endswith(SHARD) and m == "GET"] == [f"bytes={kept}-"]
    assert cli(hub, tmp_path, "verify", str(ck)).returncode == 0
    assert not (ck / ".wan22-partial").exists()


def test_a_corrupted_transfer_is_refused(hub, tmp_path):
    hub.tamper.add((T2V, "Wan2.1_VAE.pth"))
    try:
        line = one_error(cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(tmp_path / "ck")))
    finally:
        hub.tamper.discard((T2V, "Wan2.1_VAE.pth"))
    assert f"{T2V}/Wan2.1_VAE.pth arrived corrupted" in line
    assert not (tmp_path / "ck" / "Wan2.1_VAE.pth").exists()


def test_inside_a_comfyui_tree_files_go_where_the_loader_looks(hub, tmp_path):
    """Run from inside a ComfyUI tree (folder_paths.py + comfy/): the official set lands in
    models/wan22/Wan2.2-T2V-A14B (the loader's checkpoint list), and `status` finds it there."""
    tree = tmp_path / "ComfyUI"
    (tree / "comfy").mkdir(parents=True)
    (tree / "folder_paths.py").write_text("# ComfyUI\n")
    (tree / "models").mkdir()
    work = tree / "output"
    work.mkdir()
    empty = cli(hub, work, "status")
    assert empty.returncode == 1 and "tasks runnable: none" in empty.stdout, empty.stdout
    proc = cli(hub, work, "download", "t2v-A14B")
    assert proc.returncode == 0, proc.stderr
    ck = tree / "models" / "wan22" / "Wan2.2-T2V-A14B"
    assert (ck / "wan22_manifest.json").is_file() and (ck / SHARD).is_file()
    st = cli(hub, work, "status")
    assert st.returncode == 0, st.stdout
    assert f"models folder: {tree / 'models'}" in st.stdout and "tasks runnable: t2v-A14B; all good" in st.stdout
    # Outside any ComfyUI tree, without --dir: one line saying what to do.
    line = one_error(cli(hub, tmp_path, "download", "t2v-A14B"))
    assert "not inside a ComfyUI tree" in line and "--dir" in line


def test_gated_repository_and_hf_token(hub, tmp_path):
    """HF_TOKEN is sent as huggingface_hub sends it (Authorization: Bearer); without it a gated
    repository is one line saying what to do."""
    hub.gated[T2V] = "hf_test_token"
    try:
        line = one_error(cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(tmp_path / "a")))
        assert line == f"error: {T2V} on {hub.endpoint} is gated: accept its license on the website and set HF_TOKEN"
        mark = len(hub.auth)
        ok = cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(tmp_path / "b"), HF_TOKEN="hf_test_token")
        assert ok.returncode == 0, ok.stderr
        assert hub.auth[mark:] and set(hub.auth[mark:]) == {"Bearer hf_test_token"}
    finally:
        hub.gated.pop(T2V, None)


def test_a_missing_comfy_file_names_the_download_command(hub, tmp_path):
    models = tmp_path / "models"
    dit = models / "diffusion_models" / "wan2.2_ti2v_5B_fp16.safetensors"
    line = one_error(cli(hub, tmp_path, "generate", "--task", "ti2v-5B", "--dit", str(dit), "--text_encoder",
                         str(models / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"), "--vae",
                         str(models / "vae" / "wan2.2_vae.safetensors"), "--device", "cpu"))
    assert f"python -m wan_core download ti2v-5B --set comfy --dir {models}" in line, line
    # ...which fetches exactly those files, after which generate finds them.
    assert cli(hub, tmp_path, "download", "ti2v-5B", "--set", "comfy", "--dir", str(models)).returncode == 0
    assert dit.is_file()


def test_nothing_leaves_127_0_0_1(hub, tmp_path):
    """The guard of these tests: any host but 127.0.0.1 goes to a closed proxy port, so a request
    elsewhere fails at once, as one line (it is how every test above knows it stayed local)."""
    line = one_error(cli(hub, tmp_path, "download", "t2v-A14B", "--dir", str(tmp_path / "x"),
                         HF_ENDPOINT="http://hub.example.com"))
    assert line.startswith(f"error: cannot reach {T2V} on http://hub.example.com:"), line
