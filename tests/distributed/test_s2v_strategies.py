"""The S2V DiT under the real parallel strategies on 2 gloo ranks (CPU, float32) against the
official forward (golden `s2v`): Ulysses (all-to-all around self-attention, token sharding with the
audio injection gathering the video tokens) and FSDP2 rank-local loading.

Tolerance 1e-5 of max|golden| (rel_err), as the single-device test: the collectives move fp32
values exactly; only kernel blocking on the smaller per-rank shapes can change summation order.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from test_strategies import RankPool  # noqa: E402  (the rank pool of the DiT strategy tests)

TOL = 1e-5


@pytest.fixture(scope="module")
def pool2():
    """Two gloo ranks for the whole module (test_strategies.RankPool: forkserver, file rendezvous)."""
    pool = RankPool(2)
    yield pool.run
    pool.close()


def _forward_errors(ckpt: str, golden_file: str, strategy: str):
    """On every rank: load the tiny S2V DiT with `strategy`, run the golden's four calls."""
    from safetensors.torch import load_file

    from wan_core.config import ParallelConfig
    from wan_core.distributed.context import DistContext
    from wan_core.pipeline.parallelize import parallelize_dit

    g = load_file(golden_file)
    par = ParallelConfig(num_gpus=2, ulysses_size=2, dit_fsdp=(strategy == "fsdp"))   # fsdp: + Ulysses
    dist = DistContext.from_initialized(par, torch.device("cpu"))
    if strategy == "fsdp":
        from wan_core.loading.checkpoint import dit_on_meta

        with dit_on_meta(ckpt, s2v=True) as (model, source, _):
            parallelize_dit(model, dist, par, source=source, dtype=torch.float32)
    else:
        from wan_core.loading.s2v import load_s2v_dit

        model = parallelize_dit(load_s2v_dit(ckpt, dtype=torch.float32), dist, par)
    errs = {}
    with torch.no_grad():
        for t in (999, 300):
            for d in (0, 1):
                out = model(g["in_x"][None], torch.tensor([t]), [g["in_ctx"]], g["in_ref"][None],
                            g["in_motion"][None], g["in_cond"][None], g["in_audio"],
                            motion_frames=[73, 19], drop_motion_frames=bool(d))
                e = g[f"out_t{t}_drop{d}"]
                errs[(t, d)] = float((out[0].double() - e.double()).abs().max() / e.double().abs().max())
    return errs


@pytest.mark.parametrize("strategy", ["ulysses", "fsdp"])
def test_s2v_two_ranks(pool2, tiny_dir, strategy):
    ckpt = str(tiny_dir / "ckpt" / "s2v-14B")
    results = pool2(_forward_errors, ckpt, str(tiny_dir / "golden" / "s2v.safetensors"), strategy)
    for rank, errs in enumerate(results):
        for key, err in errs.items():
            assert err < TOL, (strategy, rank, key, err)
