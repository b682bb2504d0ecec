"""int8 static quantization (leakseg.export.quantize) of a small real clip graph: PVTv2-b0 with a small text
model, exported to ONNX, calibrated on synthetic plume clips. The graphs are made once per module."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from support.models import small_model

from leakseg.export.quantize import (
    MIN_INT8_MASK_IOU, QuantizationCheck, calibration_feeds, check_quantized, mask_iou, nodes_kept_in_float,
    quantize_onnx, synthetic_clips,
)

FRAMES = 4  # per clip: short clips keep calibration and checks fast on two cores


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """(predictor on the float ONNX graph, float graph path, int8 graph path, check feeds, check clips)."""
    from leakseg.export.graph import export_onnx
    from leakseg.inference.predictor import Predictor
    from leakseg.inference.runtime import OnnxGraph
    from leakseg.model.prompts import PromptBank

    folder = tmp_path_factory.mktemp("quantize")
    model = small_model()
    fp32 = folder / "clip.onnx"
    export_onnx(model, fp32)
    prompts = list(model.config.prompts)
    bank = PromptBank(prompts, np.random.default_rng(0).normal(size=(len(prompts), model.config.text_dim)), prompts)
    predictor = Predictor(OnnxGraph(str(fp32), device="cpu"), bank, name="small", version="0",
                          config=model.config.to_dict())
    clips = synthetic_clips(3, frames=FRAMES, height=96, width=128)
    feeds = calibration_feeds(predictor, clips)
    int8 = folder / "clip.int8.onnx"
    quantize_onnx(fp32, int8, feeds[:2])
    return predictor, fp32, int8, feeds[2:], clips[2:]


def _initializers(model: onnx.ModelProto) -> dict:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def test_calibration_feeds_are_what_the_predictor_feeds(graphs):
    predictor, fp32, _, feeds, clips = graphs
    (feed,) = feeds
    size, cfg = predictor.input_size, predictor.config
    assert set(feed) == {"frames", "text", "neighbours"}
    assert feed["frames"].shape == (FRAMES, 3, size, size) and feed["frames"].dtype == np.float32
    assert feed["text"].shape == (FRAMES, cfg["text_dim"], cfg["prompt_count"]) and feed["text"].dtype == np.float32
    assert feed["neighbours"].shape == (FRAMES, 2) and feed["neighbours"].dtype == np.int64
    # The same graph fed by the Predictor itself gives bit-identical logits: the feeds are its feeds.
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    (ours,) = session.run(["logits"], feed)
    np.testing.assert_array_equal(ours, predictor.logits(clips[0]).numpy())


def test_calibration_feeds_keep_only_the_inputs_asked_for(graphs):
    predictor, _, _, _, clips = graphs
    (feed,) = calibration_feeds(predictor, clips, input_names=["frames", "text"])
    assert set(feed) == {"frames", "text"}


def test_int8_graph_loads_and_is_quantized_per_channel(graphs):
    _, _, int8, _, _ = graphs
    ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    model = onnx.load(str(int8))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    init = _initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    conv_weight_dqs = [producer[n.input[1]] for n in model.graph.node
                       if n.op_type == "Conv" and n.input[1] in producer
                       and producer[n.input[1]].op_type == "DequantizeLinear"]
    assert len(conv_weight_dqs) > 10
    for dq in conv_weight_dqs:
        weight, scale = init[dq.input[0]], init[dq.input[1]]
        axis = {a.name: a.i for a in dq.attribute}.get("axis", 1)
        assert weight.dtype == np.int8
        assert axis == 0 and scale.size == weight.shape[0], dq.name
    assert any(init[dq.input[1]].size > 1 for dq in conv_weight_dqs)


def test_float_nodes_stay_float(graphs):
    """Softmax output is never rounded to int8, and the logits come from a float conv with float weights."""
    _, fp32, int8, _, _ = graphs
    model = onnx.load(str(int8))
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert softmaxes
    for node in softmaxes:
        assert "QuantizeLinear" not in consumers.get(node.output[0], []), node.name
    last = producer["logits"]
    assert last.op_type == "Conv" and last.input[1] in _initializers(model)
    assert _initializers(model)[last.input[1]].dtype == np.float32
    kept = nodes_kept_in_float(onnx.load(str(fp32)))
    assert any(name.endswith("Softmax") for name in kept) and last.name in kept


def test_int8_logits_have_the_float_graphs_shape(graphs):
    predictor, _, int8, feeds, _ = graphs
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], feeds[0])
    size = predictor.input_size
    assert logits.shape == (FRAMES, 1, size, size) and logits.dtype == np.float32
    assert np.isfinite(logits).all()


def test_a_graph_checked_against_itself_is_identical(graphs):
    _, fp32, _, feeds, _ = graphs
    check = check_quantized(fp32, fp32, feeds, repeats=1)
    assert check.mask_iou == 1.0 and check.max_abs_logit_error == 0.0
    assert check.fp32_mask_pixels > 0 and check.passed
    assert check.frames == FRAMES and check.fp32_ms_per_frame > 0 and check.int8_ms_per_frame > 0
    assert "IoU 1.0000" in check.summary()
    assert check.to_dict()["passed"] is True


def test_int8_check_measures_a_real_difference(graphs):
    _, fp32, int8, feeds, _ = graphs
    check = check_quantized(fp32, int8, feeds, repeats=1)
    assert math.isfinite(check.max_abs_logit_error) and check.max_abs_logit_error > 0
    assert check.mask_iou is not None and 0.0 <= check.mask_iou <= 1.0
    assert check.speedup == pytest.approx(check.fp32_ms_per_frame / check.int8_ms_per_frame)
    assert check.passed == (check.mask_iou >= MIN_INT8_MASK_IOU)


def test_empty_masks_are_no_evidence():
    empty = np.zeros((2, 8, 8), dtype=bool)
    assert mask_iou(empty, empty) is None
    one = empty.copy()
    one[0, 0, 0] = True
    assert mask_iou(one, empty) == 0.0 and mask_iou(one, one) == 1.0
    check = QuantizationCheck(mask_iou=None, max_abs_logit_error=0.1, fp32_ms_per_frame=2.0, int8_ms_per_frame=1.0,
                              speedup=2.0, frames=2, fp32_mask_pixels=0, int8_mask_pixels=0, threads=1)
    assert not check.passed
    assert "no evidence" in check.summary()


def test_quantize_refuses_feeds_the_graph_does_not_take_and_writes_nothing(graphs, tmp_path):
    _, fp32, _, feeds, _ = graphs
    dst = tmp_path / "bad.int8.onnx"
    without_text = [{k: v for k, v in f.items() if k != "text"} for f in feeds]
    with pytest.raises(ValueError, match="text"):
        quantize_onnx(fp32, dst, without_text)
    with pytest.raises(ValueError):
        quantize_onnx(fp32, dst, [])
    assert not dst.exists()


def test_quantize_writes_only_its_destination(graphs, tmp_path):
    """ORT's shape inference writes beside its input: quantize_onnx works on a private copy instead."""
    import shutil

    _, fp32, _, feeds, _ = graphs
    src = tmp_path / "src" / "clip.onnx"
    src.parent.mkdir()
    shutil.copyfile(fp32, src)
    dst = tmp_path / "out" / "clip.int8.onnx"
    dst.parent.mkdir()
    # the weights only, no calibration effort: one feed, convolutions only
    quantize_onnx(src, dst, feeds[:1], op_types=("Conv",))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["clip.int8.onnx", "clip.onnx"]


# -- `leakseg export --quantize int8` ---------------------------------------------------------------------------

def _int8_export(checkpoint, out, min_iou):
    from leakseg.export.exporter import ExportOptions, export_archive

    return export_archive(ExportOptions(checkpoint=checkpoint, name="int8", output_dir=out, quantize="int8",
                                        calibration_clips=2, check_clips=1, stream=False, min_int8_mask_iou=min_iou))


def test_export_archives_the_int8_graph_with_its_check(family_checkpoint, tmp_path):
    from leakseg.inference import Predictor

    mar = _int8_export(family_checkpoint("fgstp"), tmp_path, min_iou=0.0)
    predictor = Predictor.from_archive(mar, device="cpu")
    manifest = predictor.manifest
    assert manifest.graph_file == "graph.int8.onnx"
    q = manifest.quantization
    assert q["passed"] and q["speedup"] > 0 and q["frames"] == 8 and "speedup" in q["summary"]
    frames = [np.full((32, 40), 60 + 9 * i, np.uint8) for i in range(4)]
    assert predictor.predict(frames).clip.frames == 4


def test_export_refuses_an_int8_graph_whose_masks_differ(family_checkpoint, tmp_path):
    with pytest.raises(RuntimeError, match="refusing to archive"):
        _int8_export(family_checkpoint("fgstp"), tmp_path, min_iou=1.01)  # no graph can pass: the refusal path
    assert not list(tmp_path.glob("*.mar"))


def test_export_says_int8_needs_onnx(family_checkpoint, tmp_path):
    from leakseg.export.exporter import ExportOptions, export_archive

    with pytest.raises(ValueError, match="needs --format onnx"):
        export_archive(ExportOptions(checkpoint=family_checkpoint("fgstp"), output_dir=tmp_path, quantize="int8",
                                     format="torchscript"))
