"""Our wav2vec2 + feature processing against the official AudioEncoder (golden `s2v`).

`audio_feat_all_layers` [25, 59, 32] is the official `extract_audio_feat("inputs/test.wav",
return_all_layers=True)`: processor normalisation, all 25 hidden states of Wav2Vec2ForCTC, linear
50 -> 30 fps interpolation. Tolerance 1e-5 of max|golden| (rel_err): both sides are float32; only
summation order differs (measured 4e-7). A wrong piece (no final LayerNorm on the last state,
post-LN instead of pre-LN, an unfolded weight norm, eps 1e-7 dropped, nearest instead of linear
interpolation) costs >1e-2.

The bucketing (`audio_bucket`, `audio_num_repeat`) is pure indexing: it must be exact.
"""
from __future__ import annotations

import pytest
import torch

from conftest import rel_err

TOL = 1e-5


@pytest.fixture(scope="module")
def w2v_dir(tiny_dir):
    return tiny_dir / "ckpt" / "s2v-14B" / "wav2vec2-large-xlsr-53-english"


@pytest.fixture(scope="module")
def encoder(w2v_dir):
    from wan_core.loading.wav2vec2 import load_wav2vec2

    return load_wav2vec2(w2v_dir)


def _features(encoder, tiny_dir):
    from wan_core.io.audio import decode_audio, speech_samples
    from wan_core.pipeline.s2v_audio import extract_features

    samples = speech_samples(decode_audio(tiny_dir / "inputs" / "test.wav"))
    return extract_features(encoder, samples)


def test_config(encoder):
    cfg = encoder.cfg
    assert cfg.num_hidden_states == 25 and cfg.hidden_size == 32 and cfg.do_normalize
    assert cfg.num_frames(32000) == 99


def test_all_layer_features(encoder, tiny_dir, golden):
    g = golden("s2v")["audio_feat_all_layers"]
    got = _features(encoder, tiny_dir)
    assert got.shape == g.shape == (25, 59, 32)
    for layer in range(25):   # per layer, so a mistake in one place is reported where it is
        assert rel_err(got[layer], g[layer]) < TOL, (layer, rel_err(got[layer], g[layer]))


def test_bucket_exact(golden):
    from wan_core.pipeline.s2v_audio import audio_embed_bucket_fps

    g = golden("s2v")
    bucket, clips = audio_embed_bucket_fps(g["audio_feat_all_layers"], fps=16, batch_frames=16, m=0)
    assert clips == int(g["audio_num_repeat"]) == 2
    assert torch.equal(bucket, g["audio_bucket"])


def test_bucket_from_our_features(encoder, tiny_dir, golden):
    from wan_core.pipeline.s2v_audio import bucket_features

    feats = bucket_features(_features(encoder, tiny_dir), infer_frames=16, fps=16)
    g = golden("s2v")["audio_bucket"]                      # [32, 25, 32]
    assert feats.clips == 2 and feats.embed.shape == (1, 25, 32, 32)
    assert rel_err(feats.embed[0].permute(2, 0, 1), g) < TOL
    assert torch.equal(feats.window(1), feats.embed[..., 16:32])


def test_bin_with_old_weight_norm_names(w2v_dir, tmp_path, encoder, tiny_dir, golden):
    """The real download may ship pytorch_model.bin with `weight_g`/`weight_v` (older transformers);
    it loads through torch.load(weights_only=True) and gives the same features."""
    import shutil

    from safetensors.torch import load_file

    from wan_core.loading.wav2vec2 import load_wav2vec2

    state = load_file(str(w2v_dir / "model.safetensors"))
    p = "wav2vec2.encoder.pos_conv_embed.conv."
    state[p + "weight_g"] = state.pop(p + "parametrizations.weight.original0")
    state[p + "weight_v"] = state.pop(p + "parametrizations.weight.original1")
    state["wav2vec2.masked_spec_embed"] = torch.zeros(32)
    folder = tmp_path / "w2v"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(w2v_dir / name, folder / name)
    torch.save(state, folder / "pytorch_model.bin")
    other = load_wav2vec2(folder)
    assert rel_err(_features(other, tiny_dir), golden("s2v")["audio_feat_all_layers"]) < TOL


def test_checkpoint_errors(w2v_dir, tmp_path):
    import shutil

    from wan_core.errors import CheckpointError
    from wan_core.loading.wav2vec2 import load_wav2vec2

    with pytest.raises(CheckpointError, match="does not exist"):
        load_wav2vec2(tmp_path / "absent")
    folder = tmp_path / "w"
    folder.mkdir()
    shutil.copy(w2v_dir / "config.json", folder / "config.json")
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        load_wav2vec2(folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt|truncated"):
        load_wav2vec2(folder)
