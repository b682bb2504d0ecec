"""Shapes of each part of the network, the triplet rule, and one encoder pass per frame."""

import pytest
import torch

from support.models import small_model
from leakseg.model import triplet_neighbours
from leakseg.model.decoder import FPNDecoder, fusion_head
from leakseg.model.encoder import RFB, VisionEncoder
from leakseg.model.fusion import VisionLanguageFusion
from leakseg.model.gsa import GroupSplitAttention
from leakseg.model.temporal import NonLocalBlock, TemporalCorrelation

S = 352
SCALES = [(S // 8, S // 8), (S // 16, S // 16), (S // 32, S // 32)]  # 44, 22, 11


@pytest.fixture(scope="module")
def model():
    return small_model()


def test_encoder_gives_three_32_channel_maps_at_strides_8_16_32():
    enc = VisionEncoder("pvt_v2_b0").eval()
    assert [i["num_chs"] for i in enc.feature_info] == [64, 160, 256]
    with torch.no_grad():
        feats = enc(torch.randn(2, 3, S, S))
    assert [tuple(f.shape) for f in feats] == [(2, 32, h, w) for h, w in SCALES]


def test_feature_info_of_b1_to_b5_is_128_320_512():
    import timm

    from leakseg.model.config import PVT_VARIANTS

    others = [name for name in PVT_VARIANTS if name != "pvt_v2_b0"]
    assert others == ["pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b3", "pvt_v2_b4", "pvt_v2_b5"]
    for name in others:
        with torch.device("meta"):  # the shapes without allocating b5's weights
            info = timm.create_model(name, pretrained=False, num_classes=0).feature_info
        assert [info[i]["num_chs"] for i in (1, 2, 3)] == [128, 320, 512], name


def test_rfb_keeps_size_and_outputs_32_channels():
    with torch.no_grad():
        y = RFB(160).eval()(torch.randn(1, 160, 22, 22))
    assert y.shape == (1, 32, 22, 22) and (y >= 0).all()  # final ReLU


def test_vlf_is_a_32x32_map_per_prompt_list():
    vlf = VisionLanguageFusion(32, 512, 4)
    x, text = torch.randn(2, 32, 11, 11), torch.randn(2, 512, 4)
    y = vlf(x, text)
    assert y.shape == x.shape
    # Linear in x with the matrix fmap_proj @ E^T @ visual_proj, as REFERENCE.md says.
    m = vlf.fmap_proj.weight @ text[0].T @ vlf.visual_proj.weight
    assert torch.allclose(y[0], torch.einsum("ij,jhw->ihw", m, x[0]), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("r,size", list(zip((2, 4, 8), SCALES)))
def test_nonlocal_block_keeps_shape(r, size):
    h, w = size
    with torch.no_grad():
        assert NonLocalBlock(64, 32, r)(torch.randn(2, 64, h, w)).shape == (2, 64, h, w)


def test_ctc_gsa_decoder_shapes():
    feats = [torch.randn(2, 32, h, w) for h, w in SCALES]
    with torch.no_grad():
        corr = TemporalCorrelation(32).eval()(feats, feats)
        assert [c.shape for c in corr] == [f.shape for f in feats]
        gsa = GroupSplitAttention(32).eval()
        assert gsa(feats[0]).shape == feats[0].shape
        d = FPNDecoder(32)(feats, (S, S))
        assert d.shape == (2, 1, S, S)
        assert fusion_head(32)(torch.cat([d, d], 1)).shape == (2, 1, S, S)


def test_triplet_rule():
    assert triplet_neighbours(3) == [(1, 2), (2, 0), (1, 0)]
    assert triplet_neighbours(5) == [(1, 2), (2, 3), (3, 4), (4, 2), (3, 2)]
    for t, pair in enumerate(triplet_neighbours(8)):
        assert t not in pair and len(set(pair)) == 2 and all(abs(k - t) <= 2 for k in pair)
    with pytest.raises(ValueError, match="at least 3"):
        triplet_neighbours(2)


def test_clip_forward_equals_research_triplets(model):
    """Every frame's logits equal the research code's triplet forward on (t, n1, n2)."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(5, 3, S, S, generator=g)
    text = torch.randn(1, model.config.text_dim, 4, generator=g).expand(5, -1, -1)
    pairs = triplet_neighbours(5)
    with torch.no_grad():
        clip = model(frames, text, torch.tensor(pairs))
        triplets = torch.stack([frames[[t, a, b]] for t, (a, b) in enumerate(pairs)])
        research, d1, d2 = model.forward_triplet(triplets, text)
    assert d1.shape == d2.shape == research.shape == (5, 1, S, S)
    assert torch.allclose(clip, research, atol=1e-5)


def test_encoder_runs_once_per_frame(model):
    """The clip graph encodes T frames for T masks; the research way encodes 3T."""
    seen = []
    hook = model.encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        frames = torch.randn(6, 3, S, S)
        text = torch.randn(6, model.config.text_dim, 4)
        with torch.no_grad():
            model(frames, text, torch.tensor(triplet_neighbours(6)))
            assert seen == [6]
            seen.clear()
            model.forward_triplet(torch.stack([frames[[0, 1, 2]]]), text[:1])
            assert sum(seen) == 3
    finally:
        hook.remove()
