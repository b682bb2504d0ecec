"""Shapes of each part of the network, the triplet rule, one encoder pass per frame in every family, the
family registry, and FGSTP's masks against an independent write-up of its published forward."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from support.models import small_model
from leakseg.model import triplet_neighbours
from leakseg.model.decoder import FPNDecoder, fusion_head
from leakseg.model.encoder import RFB, VisionEncoder
from leakseg.model.fusion import VisionLanguageFusion
from leakseg.model.gsa import GroupSplitAttention
from leakseg.model.temporal import NonLocalBlock, TemporalCorrelation

S = 352
SCALES = [(S // 8, S // 8), (S // 16, S // 16), (S // 32, S // 32)]  # 44, 22, 11


#: How many maps each family's decoder gives per neighbour, coarse to fine: FPN d; SINet-V2 S_g, S_5, S_4, S_3.
DECODER_MAPS = {"jvlgs": 1, "fgstp": 4}


@pytest.fixture(scope="module")
def model(family):
    return small_model(family=family)


def _text(model, n, generator=None):
    """The text input of a family that takes prompts ((N, D, P), one clip's matrix); none otherwise."""
    if "text" not in model.input_names:
        return ()
    return (torch.randn(1, model.config.text_dim, model.config.prompt_count, generator=generator).expand(n, -1, -1),)


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
    # Linear in x with the matrix fmap_proj @ E^T @ visual_proj (docs/MODELS.md, "Text and VLF").
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


def test_clip_forward_equals_research_triplets(model, family):
    """Every frame's logits equal the research code's triplet forward on (t, n1, n2), in every family."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(5, 3, S, S, generator=g)
    text = _text(model, 5, g)
    pairs = triplet_neighbours(5)
    with torch.no_grad():
        clip = model(frames, *text, torch.tensor(pairs))
        triplets = torch.stack([frames[[t, a, b]] for t, (a, b) in enumerate(pairs)])
        research, maps1, maps2 = model.forward_triplet(triplets, *text)
    assert len(maps1) == len(maps2) == DECODER_MAPS[family]
    assert all(m.shape == research.shape == (5, 1, S, S) for m in maps1 + maps2)
    assert torch.allclose(clip, research, atol=1e-5)


def test_encoder_runs_once_per_frame(model):
    """The clip graph encodes T frames for T masks; the research way encodes 3T."""
    seen = []
    hook = model.encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        frames = torch.randn(5, 3, 256, 256)
        text = _text(model, 5)
        with torch.no_grad():
            model(frames, *text, torch.tensor(triplet_neighbours(5)))
            assert seen == [5]
            seen.clear()
            model.forward_triplet(torch.stack([frames[[0, 1, 2]]]), *(t[:1] for t in text))
            assert seen == [1, 1, 1]
            seen.clear()
            model.forward_maps(frames, *text, torch.tensor(triplet_neighbours(5)))
            assert seen == [5]
    finally:
        hook.remove()


# --- the family registry ----------------------------------------------------------------------------------

def test_the_registry_knows_each_family_and_refuses_others():
    from leakseg.model import FAMILIES, FGSTP, JVLGS, ModelFamily, build_model, config_from_dict, family_names
    from leakseg.model import get_family, register_family
    from leakseg.model.fgstp import FGSTPConfig

    assert FAMILIES == family_names() == ("jvlgs", "fgstp")  # the default, JVLGS, first
    assert (get_family("jvlgs").model_class, get_family("fgstp").model_class) == (JVLGS, FGSTP)
    assert get_family("jvlgs").takes_prompts and not get_family("fgstp").takes_prompts
    with pytest.raises(ValueError, match=r"unknown model family 'unet'; leakseg knows \['jvlgs', 'fgstp'\]"):
        get_family("unet")
    with pytest.raises(ValueError, match="unknown model family 'unet'"):
        build_model("pvt_v2_b0", "unet")
    with pytest.raises(ValueError, match="unknown model_type 'unet'"):
        config_from_dict({"model_type": "unet", "backbone": "pvt_v2_b0"})
    with pytest.raises(ValueError, match="registered twice"):
        register_family(ModelFamily(name="fgstp", config_class=FGSTPConfig, model_class=FGSTP))
    with pytest.raises(ValueError, match="model_type 'fgstp'"):  # a spec whose config says another family
        ModelFamily(name="unet", config_class=FGSTPConfig, model_class=FGSTP)


def test_every_family_round_trips_config_and_model(family):
    from leakseg.model import build_model, config_from_dict, get_family

    spec = get_family(family)
    model = build_model("pvt_v2_b0", family)
    assert isinstance(model, spec.model_class) and isinstance(model.config, spec.config_class)
    assert model.family == model.config.model_type == family and not model.training
    config = config_from_dict(model.config.to_dict())
    assert config == model.config
    assert config_from_dict({k: v for k, v in config.to_dict().items() if k != "model_type"}).model_type == "jvlgs"


# --- FGSTP: masks equal an independent write-up of the published forward ---------------------------------

def _noisy_clip(seed, t=6, h=72, w=96):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h, w)).astype(np.float32)
    return [np.clip(base + rng.normal(0, 25, (h, w)), 0, 255).astype(np.uint8) for _ in range(t)]


def test_fgstp_masks_equal_the_published_forward(family_archive, family_checkpoint):
    """Frames 0..T-3 (those the research code predicts): the archive's masks equal the write-up's,
    post-processed as FGSTP's test script does (resize, sigmoid, min-max, > 0.5, no opening)."""
    from support.fgstp_reference import published_forward
    from leakseg.inference.predictor import Predictor
    from leakseg.model.checkpoint import import_authors_checkpoint, read_torch_checkpoint

    checkpoint = family_checkpoint("fgstp")
    model, _ = import_authors_checkpoint(checkpoint)
    sd = read_torch_checkpoint(checkpoint)
    predictor = Predictor.from_archive(family_archive("fgstp"), device="cpu")
    assert predictor.defaults.opening_kernel == 0 and predictor.defaults.normalization == "minmax"
    frames = _noisy_clip(0)
    result = predictor.predict(frames)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = [(np.asarray(Image.fromarray(f).convert("RGB").resize((352, 352), Image.BILINEAR)) / 255.0 - mean) / std
         for f in frames]
    x = torch.tensor(np.stack(x).transpose(0, 3, 1, 2), dtype=torch.float32)
    expected = []
    for t in range(len(frames) - 2):
        logits = published_forward(model, sd, x[t:t + 1], x[t + 1:t + 2], x[t + 2:t + 3])
        p = torch.sigmoid(F.interpolate(logits, size=frames[0].shape, mode="bilinear", align_corners=False))[0, 0]
        expected.append(((p - p.min()) / (p.max() - p.min() + 1e-8)).numpy() > 0.5)
    expected = np.stack(expected)
    assert expected.any() and not expected.all()
    assert np.array_equal(result.masks()[: len(frames) - 2], expected)
    assert result.model.family == "fgstp" and result.model.prompts == []
