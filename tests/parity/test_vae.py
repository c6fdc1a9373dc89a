"""Wan2.1 / Wan2.2 VAEs against the official outputs (goldens vae21 / vae22), loaded with load_vae.

Tolerance: 2e-5 of max|golden| (rel_err), fp32 on CPU. The official code reproduces the goldens
exactly; this implementation differs only by summation order: the Resample 2-D convolutions run as
(1,3,3) 3-D convolutions on the video tensor, the causal convolutions pad H/W inside the
convolution, and SDPA/conv blocking differ. Measured: latent 2.9e-7 / 6.1e-7, recon 3.4e-6 /
1.7e-6, rand_decode 2.2e-6 / 1.7e-6, image_latent 0 / 0 (2.1 / 2.2); the decoder's ~30 convolutions
accumulate most of it. 2e-5 leaves a >5x margin and still fails on any real mistake (a wrong
patchify channel order, a missing 'Rep' or first_chunk rule, a wrong cache frame: all >1e-2).

Also: the model structure at real size (built on the meta device) has exactly the keys and shapes
of the official checkpoints (../shared/docs/real_key_shapes.json), and bad files raise
CheckpointError naming the file.
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import _shared_dir, rel_err

TOL = 2e-5

CASES = {  # golden name -> (version, checkpoint file under ckpt/shared, real_key_shapes entry)
    "vae21": ("2.1", "Wan2.1_VAE.pth", "Wan2.1_VAE"),
    "vae22": ("2.2", "Wan2.2_VAE.pth", "Wan2.2_VAE"),
}


@pytest.fixture(scope="module")
def vae_of(tiny_dir):
    from wan_core.loading.vae import load_vae

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            version, fname, _ = CASES[name]
            cache[name] = load_vae(tiny_dir / "ckpt" / "shared" / fname, version, device="cpu")
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_tiny_config_read_from_shapes(vae_of, name):
    vae = vae_of(name)
    expected = {"vae21": (8, 16, 8, (4, 8, 8)), "vae22": (8, 48, 16, (4, 16, 16))}[name]
    assert (vae.cfg.dim, vae.cfg.z_dim, vae.cfg.dec_dim, vae.stride) == expected
    assert vae.z_dim == expected[1]
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in vae.parameters())


@pytest.mark.parametrize("name", list(CASES))
def test_encode_video(golden, vae_of, name):
    g = golden(name)
    latent = vae_of(name).encode(g["video"][None])
    assert latent.shape == (1, *g["latent"].shape) and latent.dtype == torch.float32
    assert rel_err(latent[0], g["latent"]) < TOL


@pytest.mark.parametrize("name", list(CASES))
def test_decode_latent(golden, vae_of, name):
    g = golden(name)
    recon = vae_of(name).decode(g["latent"][None])
    assert recon.shape == (1, *g["recon"].shape) and recon.dtype == torch.float32
    assert recon.abs().max() <= 1.0
    assert rel_err(recon[0], g["recon"]) < TOL


@pytest.mark.parametrize("name", list(CASES))
def test_decode_random_latent(golden, vae_of, name):
    g = golden(name)
    out = vae_of(name).decode(g["rand_latent"][None])
    assert out.shape == (1, *g["rand_decode"].shape)
    assert rel_err(out[0], g["rand_decode"]) < TOL


@pytest.mark.parametrize("name", list(CASES))
def test_encode_image(golden, vae_of, name):
    g = golden(name)
    latent = vae_of(name).encode(g["image"][None])
    assert latent.shape == (1, *g["image_latent"].shape)
    assert rel_err(latent[0], g["image_latent"]) < TOL


@pytest.mark.parametrize("name", list(CASES))
def test_batch_and_no_state_between_calls(golden, vae_of, name):
    """Batch rows are independent (row 0 of a batch of two still matches the golden), and the model
    keeps no frame cache between calls (the other tests reuse one model for many calls)."""
    g = golden(name)
    vae = vae_of(name)
    video = g["video"][None]
    latents = vae.encode(torch.cat([video, torch.flip(video, dims=[2]) * 0.5]))
    assert rel_err(latents[0], g["latent"]) < TOL
    assert rel_err(latents[1], g["latent"]) > 1e-2  # the second row is a different video
    videos = vae.decode(torch.cat([g["latent"][None], g["rand_latent"][None]]))
    assert rel_err(videos[0], g["recon"]) < TOL and rel_err(videos[1], g["rand_decode"]) < TOL
    module_internals = set(vars(torch.nn.Module()))
    state = [k for k, v in vars(vae).items() if k not in module_internals
             and isinstance(v, (list, dict, torch.Tensor))]
    assert state == []  # e.g. the official `_feat_map` / `_enc_feat_map` lists


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_shapes(vae_of, name):
    from wan_core.errors import InputError

    vae = vae_of(name)
    s = vae.stride[1]
    with pytest.raises(InputError, match="1 \\+ 4"):
        vae.encode(torch.zeros(1, 3, 4, s, s))
    with pytest.raises(InputError, match="multiples"):
        vae.encode(torch.zeros(1, 3, 1, s + 2, s))
    with pytest.raises(InputError, match=str(vae.z_dim)):
        vae.decode(torch.zeros(1, vae.z_dim + 1, 1, 2, 2))


@pytest.mark.parametrize("name", list(CASES))
def test_real_size_keys_and_shapes(tiny_dir, name):
    """The real-size model (official widths, built on meta) has exactly the official key set and
    shapes, and reading the widths back from those shapes gives the official config."""
    from wan_core.models.vae21 import WAN21_CONFIG, WanVAE21
    from wan_core.models.vae22 import WAN22_CONFIG, WanVAE22
    from wan_core.models.vae_common import config_from_state_dict

    docs = _shared_dir("WAN22_DOCS", tiny_dir.parent / "docs", "shared docs (real_key_shapes.json)")
    shapes_file = docs / "real_key_shapes.json"
    real = json.loads(shapes_file.read_text())[CASES[name][2]]
    cls, cfg = (WanVAE21, WAN21_CONFIG) if name == "vae21" else (WanVAE22, WAN22_CONFIG)
    with torch.device("meta"):
        model = cls(cfg)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(real) - set(ours)) == [] and sorted(set(ours) - set(real)) == []
    assert {k: v for k, v in ours.items() if real[k] != v} == {}
    meta_sd = {k: torch.empty(v, device="meta") for k, v in real.items()}
    assert config_from_state_dict(meta_sd) == cfg
    n_params = sum(p.numel() for p in model.parameters())
    assert round(n_params / 1e6, 2) == {"vae21": 126.89, "vae22": 704.69}[name]  # reference §4.2/§4.3


def test_bad_files_raise_checkpoint_error(tmp_path, tiny_dir):
    from wan_core.errors import CheckpointError
    from wan_core.loading.vae import load_vae

    garbage = tmp_path / "Wan2.1_VAE.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="Wan2.1_VAE.pth"):
        load_vae(garbage, "2.1")

    missing = tmp_path / "nowhere" / "Wan2.2_VAE.pth"
    with pytest.raises(CheckpointError, match="nowhere"):
        load_vae(missing, "2.2")

    bad_st = tmp_path / "vae.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="vae.safetensors"):
        load_vae(bad_st, "2.1")

    # the right kind of file for the other version: the error says which version it looks like
    with pytest.raises(CheckpointError, match="Wan2.2 VAE"):
        load_vae(tiny_dir / "ckpt" / "shared" / "Wan2.2_VAE.pth", "2.1")

    # a key missing from an otherwise valid file: strict loading names the file and the key
    sd = torch.load(tiny_dir / "ckpt" / "shared" / "Wan2.1_VAE.pth", weights_only=True)
    del sd["decoder.upsamples.3.time_conv.weight"]
    partial = tmp_path / "partial_vae.pth"
    torch.save(sd, partial)
    with pytest.raises(CheckpointError, match="partial_vae.pth.*decoder.upsamples.3.time_conv.weight"):
        load_vae(partial, "2.1")


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CASES))
def test_goldens_on_cuda(golden, tiny_dir, name):
    """The same goldens on a GPU, with TF32 off so that the convolutions really run in fp32
    (measured on an H200: <= 7.8e-6). With PyTorch's default `cudnn.allow_tf32 = True`, which the
    official code also runs under, the error is ~1e-2 (measured 1.0e-2 on vae21 recon): that is
    TF32 rounding, not an implementation difference."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from wan_core.loading.vae import load_vae

    version, fname, _ = CASES[name]
    g = golden(name)
    vae = load_vae(tiny_dir / "ckpt" / "shared" / fname, version, device="cuda")
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        assert rel_err(vae.encode(g["video"][None])[0].cpu(), g["latent"]) < TOL
        assert rel_err(vae.decode(g["latent"][None])[0].cpu(), g["recon"]) < TOL
        assert rel_err(vae.decode(g["rand_latent"][None])[0].cpu(), g["rand_decode"]) < TOL
        assert rel_err(vae.encode(g["image"][None].cuda())[0].cpu(), g["image_latent"]) < TOL
