"""fp8 / fp8_fast on one GPU (issue 12): correctness of a DiT forward against fp32, and the time of
A14B-sized linears in bf16, fp8 (dequantized in the linear) and fp8_fast (torch._scaled_mm).

    python bench/fp8_check.py --out OUT.json

The tiny checkpoint is written here (wan_core.tinyckpt), so nothing needs to be carried.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wan_core.loading import fp8 as fp8mod  # noqa: E402
from wan_core.loading.components import load_dit_any  # noqa: E402


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def tiny_forward(dev) -> dict:
    from wan_core.tinyckpt import write_tiny_t2v

    root = Path(tempfile.mkdtemp()) / "tiny"
    write_tiny_t2v(root)
    folder = root / "high_noise_model"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator().manual_seed(0)
    out = {}
    ref = None
    for name, dtype, weights in (("fp32", torch.float32, "fp32"), ("bf16", torch.bfloat16, "bf16"),
                                 ("fp8", torch.bfloat16, "fp8"), ("fp8_fast", torch.bfloat16, "fp8_fast")):
        fast = weights == "fp8_fast" and fp8mod.fast_supported(dev)[0]
        model = load_dit_any(folder, dtype, dev, weights=weights, fast=fast)
        cfg = model.cfg
        if ref is None:
            x = torch.randn(1, cfg.in_dim, 5, 32, 32, generator=gen)
            ctx = torch.randn(1, 12, 4096, generator=gen)
            seq_len = 5 * 16 * 16
        calls = {"n": 0}
        orig = torch._scaled_mm

        def counting(*a, **k):
            calls["n"] += 1
            return orig(*a, **k)

        torch._scaled_mm = counting
        with torch.no_grad():
            y = model(x.to(dev), torch.tensor([900.0], device=dev), ctx.to(dev), seq_len).float().cpu()
        torch._scaled_mm = orig
        fp8_layers = sum(1 for m in model.modules() if isinstance(m, fp8mod.Fp8Linear))
        if ref is None:
            ref = y
        out[name] = {"rel_err_vs_fp32": rel(y, ref), "fp8_layers": fp8_layers, "scaled_mm_calls": calls["n"]}
        del model
    return out


def timing(dev, tokens: int) -> dict:
    res = {}
    for k, n in ((5120, 5120), (5120, 13824), (13824, 5120)):
        w = torch.randn(n, k, device=dev) * 0.02
        x = torch.randn(tokens, k, device=dev, dtype=torch.bfloat16)
        lin = torch.nn.Linear(k, n, device=dev, dtype=torch.bfloat16)
        lin.weight.data.copy_(w)
        ref = F.linear(x, lin.weight, lin.bias)
        row = {}
        for name in ("bf16", "fp8", "fp8_fast"):
            mod = torch.nn.Linear(k, n, device=dev, dtype=torch.bfloat16)
            mod.load_state_dict(lin.state_dict())
            if name != "bf16":
                fp8mod.apply_fp8(torch.nn.Sequential(mod), ["0"], torch.bfloat16, fast=name == "fp8_fast")
            with torch.no_grad():
                y = mod(x)
                for _ in range(3):
                    mod(x)
                torch.cuda.synchronize()
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                for _ in range(20):
                    mod(x)
                e.record()
                torch.cuda.synchronize()
            row[name] = {"ms": s.elapsed_time(e) / 20, "rel_err_vs_bf16": rel(y.float(), ref.float())}
        res[f"{tokens}x{k}->{n}"] = row
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fp8_check.json")
    args = ap.parse_args()
    dev = torch.device("cuda")
    report = {"gpu": torch.cuda.get_device_name(), "cc": list(torch.cuda.get_device_capability()),
              "torch": torch.__version__, "fast_supported": fp8mod.fast_supported(dev)}
    report["tiny_forward"] = tiny_forward(dev)
    print(json.dumps(report, indent=1), flush=True)
    report["linear_timing"] = {**timing(dev, 32760), **timing(dev, 75600)}   # 480P / 720P 81-frame tokens
    text = json.dumps(report, indent=1)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
