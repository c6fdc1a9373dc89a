"""Issue 15 in a real ComfyUI server (CPU, 2 gloo ranks, tiny T2V): a stopped rank never hangs the
queue, nothing listens beyond the machine, bad inputs get messages, and nothing is left behind when
ComfyUI is SIGKILLed mid-run. One server of its own (it is killed at the end), with a private TMPDIR
so that the groups' private folders can be counted. Prompts are built from /object_info (every
input at its default, then ours), so widgets other issues add do not break them."""
from __future__ import annotations

import json
import os
import signal
import time
from types import SimpleNamespace

import pytest

import comfyui_harness as harness
from conftest import missing
from tests._sockets import listening
from tests._procs import sigstop

pytestmark = [pytest.mark.comfy, pytest.mark.slow]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, tiny_dir):
    comfy_dir, python, why = harness.locate()
    if comfy_dir is None:
        missing(why)
    base = harness.make_base_dir(tmp_path_factory.mktemp("comfy_hang"), tiny_dir)
    bad = base / "models" / "wan22" / "bad-index"          # t2v with an index naming ../../etc/hostname
    (bad).mkdir()
    t2v = base / "models" / "wan22" / "t2v-A14B"
    for entry in t2v.iterdir():
        if entry.name != "high_noise_model":
            os.symlink(entry.resolve(), bad / entry.name)
    (bad / "high_noise_model").mkdir()
    for f in (t2v / "high_noise_model").iterdir():
        if not f.name.endswith(".index.json"):
            os.symlink(f.resolve(), bad / "high_noise_model" / f.name)
        else:
            data = json.loads(f.read_text())
            data["weight_map"][next(iter(data["weight_map"]))] = "../../etc/hostname"
            (bad / "high_noise_model" / f.name).write_text(json.dumps(data))
    tmp = tmp_path_factory.mktemp("comfy_tmp")
    server = harness.Server(comfy_dir, python, base, env=dict(os.environ, TMPDIR=str(tmp))).start()
    client = harness.Client(server.url)
    yield SimpleNamespace(server=server, client=client, base=base, tmp=tmp, info=client.get("/object_info"))
    server.stop()


def _inputs(info: dict, class_type: str, **values) -> dict:
    """Every input of `class_type` that has a default (combos: their first option), then `values`."""
    out = {}
    spec = info[class_type]["input"]
    for section in ("required", "optional"):
        for name, decl in spec.get(section, {}).items():
            kind, opts = decl[0], (decl[1] if len(decl) > 1 else {})
            if "default" in opts:
                out[name] = opts["default"]
            elif isinstance(kind, list) and kind:
                out[name] = kind[0]
            elif kind == "COMBO" and opts.get("options"):
                out[name] = opts["options"][0]
    out.update(values)
    return out


def prompt(comfy, *, gpus=2, steps=3, seed=1, checkpoint="t2v-A14B", engine=None, text=None) -> dict:
    info = comfy.info
    return {
        "1": {"class_type": "Wan22MGModelLoader", "inputs": _inputs(
            info, "Wan22MGModelLoader", task="t2v-A14B", checkpoint=checkpoint, gpus=gpus,
            ulysses_size=gpus, device="cpu", dtype="fp32")},
        "2": {"class_type": "Wan22MGTextEncode", "inputs": _inputs(info, "Wan22MGTextEncode",
                                                                    prompt="a fox in the snow")},
        "3": {"class_type": "Wan22MGSampler", "inputs": _inputs(
            info, "Wan22MGSampler", engine=engine if engine is not None else ["1", 0],
            text=text if text is not None else ["2", 0], width=64, height=64, length=5, steps=steps,
            seed=seed)},
        "4": {"class_type": "Wan22MGDecode", "inputs": {"latent": ["3", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }


def status(comfy) -> dict:
    return comfy.client.get("/wan22mg/status")


def worker_pids(comfy) -> list[int]:
    return [r["pid"] for g in status(comfy)["groups"] for r in (g["ranks"].get("ranks") or [])]


def group_folders(comfy) -> list[str]:
    return sorted(p.name for p in comfy.tmp.glob("wan_core-*"))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_ok(comfy, p, timeout=300):
    run = comfy.client.run(p, timeout=timeout)
    assert run.ok, run.describe() + "\n" + comfy.server.log()[-3000:]
    return run


def test_sockets_during_a_two_rank_run_are_loopback_or_private(comfy):
    """While 2 ranks generate: every listening socket of ComfyUI and its workers is on loopback or
    an AF_UNIX socket in a 0700 folder; the status route names the checkpoint by its model folder."""
    seen = {}

    def scan(typ, data, client, prompt_id):
        if typ == "progress" and data.get("node") == "3" and not seen:
            pids = [comfy.server.proc.pid, *worker_pids(comfy)]
            seen["pids"] = pids
            seen["sockets"] = [(s, s.problem()) for s in listening(pids)]

    run = comfy.client.run(prompt(comfy, steps=6), timeout=300, on_event=scan)
    assert run.ok, run.describe()
    assert len(seen["pids"]) == 3, seen
    kinds = {s.kind for s, _ in seen["sockets"]}
    assert "tcp" in kinds and "unix" in kinds, seen["sockets"]          # HTTP + gloo, control socket
    assert [(s, why) for s, why in seen["sockets"] if why] == []
    st = status(comfy)
    assert [g["checkpoint"] for g in st["groups"]] == ["wan22/t2v-A14B"]
    assert str(comfy.base) not in json.dumps(st) and str(comfy.tmp) not in json.dumps(st)


def test_stopped_rank_then_cancel_ends_the_prompt_then_the_next_one_runs(comfy):
    """SIGSTOP rank 1 mid-run, then Cancel (POST /interrupt): rank 1 cannot acknowledge; within
    15 s the prompt fails with a message naming rank 1, what it was doing and the remedy; no
    worker process or private folder is left; the next prompt starts a new group and succeeds."""
    loads = status(comfy)["loads"]
    before_pids = worker_pids(comfy)
    assert len(before_pids) == 2
    marks = {}

    def stop_then_cancel(typ, data, client, prompt_id):
        if typ == "progress" and data.get("node") == "3" and not marks:
            sigstop(before_pids[1])
            client.post("/interrupt", {"prompt_id": prompt_id})
            marks["t"] = time.monotonic()

    run = comfy.client.run(prompt(comfy, steps=400, seed=2), timeout=120, on_event=stop_then_cancel)
    took = time.monotonic() - marks["t"]
    err = run.first("execution_error")
    assert err is not None, run.describe()
    assert took < 15, took
    msg = err["exception_message"]
    assert err["node_type"] == "Wan22MGSampler" and "WorkerHung" in msg, msg
    assert "worker rank 1" in msg and str(before_pids[1]) in msg and "stopped (SIGSTOP" in msg, msg
    assert "did not acknowledge Cancel within 10 s" in msg and "next prompt starts a new one" in msg
    assert not any(alive(p) for p in before_pids)
    assert group_folders(comfy) == []
    assert comfy.server.alive()
    run_ok(comfy, prompt(comfy, seed=3))
    assert status(comfy)["loads"] == loads + 1


def test_bad_inputs_get_messages_and_the_server_keeps_serving(comfy):
    """A literal where a link belongs (API prompt): the node, the input and what to connect. An
    index naming a file outside its folder: refused, naming the index and the name."""
    run = comfy.client.run(prompt(comfy, engine="x"))
    err = run.first("execution_error")
    assert err is not None and err["node_id"] == "3", run.describe()
    assert "'str' object has no attribute" not in err["exception_message"]
    assert "Sampler" in err["exception_message"] and "input 'engine'" in err["exception_message"]
    assert "Model Loader" in err["exception_message"]
    run = comfy.client.run(prompt(comfy, text="hello"))
    err = run.first("execution_error")
    assert err is not None and "input 'text'" in err["exception_message"] and "'hello'" in err["exception_message"]
    run = comfy.client.run(prompt(comfy, checkpoint="bad-index", gpus=1))
    err = run.first("execution_error")
    assert err is not None and err["node_type"] == "Wan22MGModelLoader", run.describe()
    assert "'../../etc/hostname'" in err["exception_message"] and "not a file name inside" in err["exception_message"]
    assert comfy.server.alive()
    run_ok(comfy, prompt(comfy, seed=4))


def test_comfyui_sigkilled_mid_run_leaves_nothing(comfy):
    """Last (it kills the module's server): ComfyUI SIGKILLed while 2 ranks generate. The workers
    exit and remove the group's private folder and shared memory themselves."""
    pids = {}

    def kill(typ, data, client, prompt_id):
        if typ == "progress" and data.get("node") == "3" and not pids:
            pids["workers"] = worker_pids(comfy)
            pids["shm_before"] = [n for n in os.listdir("/dev/shm") if n.startswith("wan")]
            os.killpg(comfy.server.proc.pid, signal.SIGKILL)

    with pytest.raises(Exception):       # the websocket closes under the client
        comfy.client.run(prompt(comfy, steps=400, seed=5), timeout=60, on_event=kill)
    workers = pids["workers"]
    assert len(workers) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (any(alive(p) for p in workers) or group_folders(comfy)):
        time.sleep(0.1)
    assert not any(alive(p) for p in workers)
    assert group_folders(comfy) == []
    tokens = {n[:11] for n in pids["shm_before"]}
    assert [n for n in os.listdir("/dev/shm") if n[:11] in tokens] == []
