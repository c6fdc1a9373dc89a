"""VAE decode split by rows across gloo ranks (distributed/vae_split.py) against a one-rank decode.

Oracles: the one-rank decode of the same tiny VAE (computed in the same rank process, so threads and
kernels are the same), and the official `rand_decode` golden (wan22_tiny). Tolerances (fp32, CPU):
- split vs one rank: 1e-5 of max|one rank| (rel_err). Every band value is computed from the same
  input values as in one frame (halo rows instead of zero padding at band borders), so only the
  convolution kernels' blocking for a shorter frame can change summation order (observed: see the
  assertion messages; 0.0 on 2 and 3 ranks here). A missing halo (zero padding at a band
  border), a halo from the wrong side or an attention block over one band alone give > 1e-2.
- split vs the golden: the parity tolerance of tests/parity/test_vae.py (2e-5).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.distributed.test_strategies import RankPool, rel_err  # noqa: E402

pytestmark = pytest.mark.timeout(300)

SPLIT_TOL = 1e-5
GOLDEN_TOL = 2e-5
FILES = {"vae21": ("2.1", "Wan2.1_VAE.pth"), "vae22": ("2.2", "Wan2.2_VAE.pth")}


@pytest.fixture(scope="module")
def pool3():
    pool = RankPool(3)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def pool2():
    pool = RankPool(2)
    yield pool
    pool.close()


def _decode_case(vae_file: str, version: str, latent: torch.Tensor, world_used: int):
    """On every rank: one-rank decode, then the split decode over the first `world_used` ranks
    (a subgroup when fewer than the pool). Returns (reference, split) on each participating rank."""
    import torch.distributed as tdist

    from wan_core.distributed.vae_split import decode_rows
    from wan_core.loading.vae import load_vae

    torch.set_num_threads(1)
    vae = load_vae(vae_file, version, device="cpu")
    ref = vae.decode(latent)
    ranks = list(range(world_used))
    group = tdist.new_group(ranks) if world_used < tdist.get_world_size() else tdist.group.WORLD
    rank = tdist.get_rank()
    if rank not in ranks:
        return None
    out = decode_rows(vae, latent, group, rank, world_used)
    return ref, out


@pytest.mark.parametrize("name", list(FILES))
def test_split_decode_matches_one_rank_and_golden(pool2, golden, tiny_dir, name):
    version, fname = FILES[name]
    g = golden(name)
    results = pool2.run(_decode_case, str(tiny_dir / "ckpt" / "shared" / fname), version,
                        g["rand_latent"][None], 2)
    for rank, (ref, out) in enumerate(results):
        assert out.shape == ref.shape == (1, *g["rand_decode"].shape)
        err = rel_err(out, ref)
        assert err <= SPLIT_TOL, f"rank {rank}: split vs one rank {err:.2e}"
        assert rel_err(out[0], g["rand_decode"]) < GOLDEN_TOL
    assert torch.equal(results[0][1], results[1][1])   # every rank holds the same whole video


@pytest.mark.parametrize("name", list(FILES))
def test_uneven_bands_three_ranks(pool3, tiny_dir, name):
    """7 latent rows on 3 ranks -> bands of 3, 2, 2 rows (uneven heights through every level)."""
    version, fname = FILES[name]
    z = 16 if name == "vae21" else 48
    latent = torch.randn(1, z, 3, 7, 5, generator=torch.Generator().manual_seed(1))
    results = pool3.run(_decode_case, str(tiny_dir / "ckpt" / "shared" / fname), version, latent, 3)
    for rank, (ref, out) in enumerate(results):
        err = rel_err(out, ref)
        assert err <= SPLIT_TOL, f"rank {rank}: split vs one rank {err:.2e}"


def test_row_bands_and_too_many_ranks():
    from wan_core.distributed.vae_split import row_bands
    from wan_core.errors import InputError

    assert row_bands(90, 4) == [23, 23, 22, 22] and row_bands(4, 4) == [1, 1, 1, 1]
    with pytest.raises(InputError, match="3 rows, fewer than the 4 ranks"):
        row_bands(3, 4)
