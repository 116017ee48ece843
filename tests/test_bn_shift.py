"""Pre-activation BatchNorms folded into the convs around them (the u8s8 file's float graph), and the shared ReLUs
that fold leaves behind kept as uint8 Clips by the quantizer.

The fold must compute the same function as the FP32 file (checked on the tiny CHS export and on small graphs
for each rule that decides whether a BN may fold), and the quantized ReLU must stay a ReLU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from chs.runtime.backends.ort import OrtRunner

pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from onnxruntime.quantization.calibrate import TensorData, TensorsData  # noqa: E402
from onnxruntime.quantization.quant_utils import load_model_with_shape_infer  # noqa: E402

from chs.calibration.bn_shift import fold_preactivation_batchnorms, write_folded  # noqa: E402
from chs.calibration.data import load_calibration_crops  # noqa: E402
from chs.calibration.ort_cpu import quantize_ort_cpu  # noqa: E402
from chs.calibration.quantize import quantize_u8s8_folded  # noqa: E402
from chs.model.sensitive import float32_nodes  # noqa: E402

RNG = np.random.default_rng(0)


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _init(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def _bn(name: str, x: str, y: str, c: int, scale_sign: float = 1.0) -> tuple[onnx.NodeProto, list]:
    """A BN with real-looking statistics (scales of one sign, shifts of both signs)."""
    params = [_init(f"{name}.s", scale_sign * RNG.uniform(0.3, 1.5, c)), _init(f"{name}.b", RNG.normal(0, 0.5, c)),
              _init(f"{name}.m", RNG.normal(0, 0.5, c)), _init(f"{name}.v", RNG.uniform(0.5, 2.0, c))]
    return helper.make_node("BatchNormalization", [x, *(p.name for p in params)], [y], name=name), params


def _conv(name: str, x: str, y: str, cin: int, cout: int, k: int = 3) -> tuple[onnx.NodeProto, list]:
    w = _init(f"{name}.w", RNG.normal(0, 0.3, (cout, cin, k, k)))
    return helper.make_node("Conv", [x, w.name], [y], name=name, kernel_shape=[k, k], pads=[k // 2] * 4), [w]


def _block_graph(other_reader: str) -> onnx.ModelProto:
    """x -> conv0 -> a; a -> BN -> ReLU -> conv2 -> out; a also goes to ``other_reader``'s path."""
    c = 4
    nodes, inits = [], []
    for n, p in (_conv("conv0", "x", "a", 3, c), _bn("bn", "a", "bn_out", c), _conv("conv2", "r", "out", c, c)):
        nodes.append(n)
        inits += p
    nodes.insert(2, helper.make_node("Relu", ["bn_out"], ["r"], name="relu"))
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None] * 4)]
    if other_reader == "output":  # the offset would reach a graph output
        outputs.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, [None] * 4))
    elif other_reader in ("padded conv", "1x1 conv"):
        k = 3 if other_reader == "padded conv" else 1
        n, p = _conv("side", "a", "side_out", c, 2, k)
        nodes.append(n)
        inits += p
        outputs.append(helper.make_tensor_value_info("side_out", TensorProto.FLOAT, [None] * 4))
    elif other_reader == "pool, resize, add, concat, BN":  # every pass-through op, then a BN takes it out
        inits += [_init("scales", [1, 1, 2, 2]), _init("one", np.ones((1, 1, 1, 1)))]
        nodes += [helper.make_node("AveragePool", ["a"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
                  helper.make_node("Resize", ["p", "", "scales"], ["u"], name="resize", mode="linear"),
                  helper.make_node("MaxPool", ["u"], ["mp"], name="maxpool", kernel_shape=[1, 1]),
                  helper.make_node("Add", ["mp", "a"], ["s"], name="add"),
                  helper.make_node("Concat", ["s", "x"], ["cat"], name="cat", axis=1)]
        n, p = _bn("bn_end", "cat", "end", c + 3)
        nodes.append(n)
        inits += p
        outputs.append(helper.make_tensor_value_info("end", TensorProto.FLOAT, [None] * 4))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("other_reader, folds", [("1x1 conv", True), ("pool, resize, add, concat, BN", True),
                                                 ("padded conv", False), ("output", False)])
def test_fold_only_where_the_offset_can_be_taken_out_exactly(other_reader, folds):
    model = _block_graph(other_reader)
    x = {"x": RNG.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)}
    ref = _run(model, x)
    relus = fold_preactivation_batchnorms(model, set())
    assert relus == (["relu"] if folds else [])
    bns = [n.name for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert ("bn" not in bns) == folds
    onnx.checker.check_model(model)
    for got, want in zip(_run(model, x), ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_negative_bn_scale_does_not_fold():
    model = _block_graph("1x1 conv")
    bn = next(n for n in model.graph.node if n.name == "bn")
    inits = {t.name: t for t in model.graph.initializer}
    s = numpy_helper.to_array(inits[bn.input[1]]).copy()
    s[0] = -s[0]  # relu(k x + c) = k relu(x + c / k) needs k > 0
    inits[bn.input[1]].CopyFrom(_init(bn.input[1], s))
    assert fold_preactivation_batchnorms(model, set()) == []


def test_excluded_nodes_do_not_fold():
    model = _block_graph("1x1 conv")
    assert fold_preactivation_batchnorms(model, {"conv2"}) == []


def test_a_graph_without_unique_node_names_is_left_alone():
    model = _block_graph("1x1 conv")
    model.graph.node[0].name = model.graph.node[-1].name = "same"
    assert fold_preactivation_batchnorms(model, set()) == []
    model.graph.node[0].name = model.graph.node[-1].name = ""
    assert fold_preactivation_batchnorms(model, set()) == []
    assert [n.op_type for n in model.graph.node].count("BatchNormalization") == 1  # nothing was edited
    assert not any(t.name.endswith("_bnshift") for t in model.graph.initializer)


def test_fold_is_exact_on_the_tiny_chs_export(tiny_ccr_onnx, fixtures_dir, tmp_path):
    """Every BN of a ConvBlock that reads a conv output folds (bn2, bn3); the landmarks stay the same."""
    fp32 = onnx.load(str(tiny_ccr_onnx))
    n_bn = sum(n.op_type == "BatchNormalization" for n in fp32.graph.node)
    model = load_model_with_shape_infer(Path(tiny_ccr_onnx))
    relus = fold_preactivation_batchnorms(model, float32_nodes(fp32))
    left = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert len(relus) > 0 and left == n_bn - len(relus)
    # module paths survive in the new initializer names, so the float32 rule still finds the same nodes
    assert float32_nodes(model) == float32_nodes(fp32) - {n.name for n in fp32.graph.node if n.name not in
                                                         {m.name for m in model.graph.node}}
    onnx.checker.check_model(model, full_check=True)
    folded = tmp_path / "folded.onnx"
    onnx.save(model, str(folded))
    runner = OrtRunner(tiny_ccr_onnx, providers="cpu")
    crops = load_calibration_crops(fixtures_dir / "pts", runner.meta)
    ref, got = runner.infer(crops), OrtRunner(folded, providers="cpu").infer(crops)
    assert np.abs(got["landmarks"] - ref["landmarks"]).max() < 1e-3
    assert np.abs(got["scores"] - ref["scores"]).max() < 1e-4
    assert write_folded(tiny_ccr_onnx, tmp_path / "again.onnx") == len(relus)


def _shared_relu_graph() -> onnx.ModelProto:
    """x -> conv0 -> a (half negative); relu(a) -> conv2 -> out1, and conv3(a) -> out2 reads a as it is."""
    c = 4
    nodes, inits = [], []
    for n, p in (_conv("conv0", "x", "a", 3, c, 1), _conv("conv2", "r", "out1", c, c, 1),
                 _conv("conv3", "a", "out2", c, c, 1)):
        nodes.append(n)
        inits += p
    nodes.insert(1, helper.make_node("Relu", ["a"], ["r"], name="relu"))
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * 4) for o in ("out1", "out2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ranges(model: onnx.ModelProto, x: np.ndarray) -> TensorsData:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = ["a", "r", "out1", "out2"]
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    values = dict(zip(names, _run(probe, {"x": x}), strict=True)) | {"x": x}
    return TensorsData("MinMax", {k: TensorData(lowest=np.float32(v.min()), highest=np.float32(v.max()))
                                  for k, v in values.items()})


@pytest.mark.parametrize("keep_relu", [True, False])
def test_a_relu_whose_input_is_shared_stays_a_relu_once_quantized(keep_relu, monkeypatch):
    """ORT's operator-format quantizer drops a ReLU after a quantized op; with another reader of the op's output
    that output keeps its negative range, so out1 would be conv2(a) instead of conv2(relu(a))."""
    import chs.calibration.ort_cpu as ort_cpu

    if not keep_relu:
        monkeypatch.setattr(ort_cpu, "relus_as_clips", lambda *a, **k: 0)
    model = _shared_relu_graph()
    x = RNG.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    want = _run(model, {"x": x})
    ranges = _ranges(model, x)
    assert ranges["a"].range_value[0] < 0 < ranges["a"].range_value[1]
    q = quantize_ort_cpu(model, ranges, set())
    clips = [n for n in q.graph.node if n.op_type == "Clip"]
    got = _run(q, {"x": x})
    err = [np.abs(g - w).max() / np.abs(w).max() for g, w in zip(got, want, strict=True)]
    if keep_relu:
        assert len(clips) == 1 and clips[0].input[1].endswith("zero_point")
        assert max(err) < 0.03  # 8-bit rounding
    else:
        assert not clips and err[0] > 0.2 and err[1] < 0.03  # the ReLU is lost: a wrong answer, silently


def test_u8s8_from_the_folded_graph(tiny_ccr_onnx, fixtures_dir, tmp_path):
    """The shipped u8s8 form: the folded BNs' ReLUs are uint8 Clips (no depthwise requantization for them), and
    the landmarks stay as close to FP32 as the unfolded form's (test_calibration's bounds)."""
    runner = OrtRunner(tiny_ccr_onnx, providers="cpu")
    crops = load_calibration_crops(fixtures_dir / "pts", runner.meta)
    n_folds = write_folded(tiny_ccr_onnx, tmp_path / "folded.onnx")
    q = quantize_u8s8_folded(tiny_ccr_onnx, tmp_path / "u8s8.onnx", crops)
    relu_clips = [n for n in q.graph.node if n.op_type == "Clip" and n.name.endswith("_as_clip")]
    assert len(relu_clips) == n_folds > 0
    folded = onnx.load(str(tmp_path / "folded.onnx"))
    keep = float32_nodes(folded)
    bn_left = sum(n.op_type == "BatchNormalization" and n.name not in keep for n in folded.graph.node)
    assert sum(n.op_type == "QLinearConv" and "batch_norm" in n.name for n in q.graph.node) == bn_left
    ref, got = runner.infer(crops), OrtRunner(tmp_path / "u8s8.onnx", providers="cpu").infer(crops)
    d = np.linalg.norm(got["landmarks"] - ref["landmarks"], axis=-1).ravel()
    assert np.median(d) < 0.3 and (d <= 1.0).mean() >= 0.8
    assert np.abs(got["scores"] - ref["scores"]).max() < 0.02
