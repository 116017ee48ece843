"""The u8s8 file's windowed RoiAlign: the same values as ONNX Runtime's RoiAlign node and the NumPy reference of
the ONNX spec, for windows inside, across and off the border, float or uint8 NHWC features, with and without the
CCR's NHWC path to its grouped convs."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from roi_align_ref import roi_align_ref

from chs.calibration.ort_roi_align import windowed_roi_aligns


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _roi_graph(c: int, h: int, w: int, s: int, sr: int, scale: float, half: float, *, uint8: bool = False,
               tail: int = 0, free_width: bool = False, r: int | str = "r") -> onnx.ModelProto:
    """features -> RoiAlign over windows centre -/+ half (the CCR's rois); ``uint8``: the features are the
    DequantizeLinear of a uint8 NHWC map (the u8s8 file's form); ``tail`` = n > 0: the CCR's Concat with two
    coordinate channels -> QuantizeLinear -> (N, n * (C + 2), S, S) -> NHWC; ``r``: the number of windows, free
    or fixed (the rewrite reads shapes from one run with every free dimension 1)."""
    nodes, inits = [], [_const("half", np.float32(half)), _const("q_scale", np.float32(0.02)),
                        _const("q_zero", np.uint8(120)), _const("x_scale", np.float32(0.05)),
                        _const("x_zero", np.uint8(7))]
    if uint8:
        inputs = [helper.make_tensor_value_info("xq", TensorProto.UINT8, ["n", h, w, c])]
        nodes += [helper.make_node("Transpose", ["xq"], ["xt"], perm=[0, 3, 1, 2]),
                  helper.make_node("DequantizeLinear", ["xt", "x_scale", "x_zero"], ["x"])]
    else:
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, h, w])]
    inputs += [helper.make_tensor_value_info("centre", TensorProto.FLOAT, [r, 2]),
               helper.make_tensor_value_info("idx", TensorProto.INT64, [r])]
    if free_width:
        inputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, [r, 2]))
    nodes += [helper.make_node("Sub", ["centre", "half"], ["lo"]),
              helper.make_node("Add", ["other" if free_width else "centre", "half"], ["hi"]),
              helper.make_node("Concat", ["lo", "hi"], ["rois"], axis=1),
              helper.make_node("RoiAlign", ["x", "rois", "idx"], ["y"], name="roi", mode="avg", output_height=s,
                               output_width=s, sampling_ratio=sr, spatial_scale=scale,
                               coordinate_transformation_mode="half_pixel")]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [r, c, s, s])
    if tail:
        inputs.append(helper.make_tensor_value_info("coords", TensorProto.FLOAT, [r, 1, s, s]))
        inits.append(_const("grouped", np.array([-1, tail * (c + 2), s, s], np.int64)))
        nodes += [helper.make_node("Neg", ["coords"], ["coords2"]),
                  helper.make_node("Concat", ["y", "coords", "coords2"], ["cat"], axis=1),
                  helper.make_node("QuantizeLinear", ["cat", "q_scale", "q_zero"], ["cq"]),
                  helper.make_node("Reshape", ["cq", "grouped"], ["g"]),
                  helper.make_node("Transpose", ["g"], ["nhwc"], perm=[0, 2, 3, 1])]
        out = helper.make_tensor_value_info("nhwc", TensorProto.UINT8, ["n", s, s, tail * (c + 2)])
    graph = helper.make_graph(nodes, "roi", inputs, [out], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    names = {i.name for i in model.graph.input}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v for k, v in feed.items() if k in names})[0]


def _feed(rng, n: int, c: int, h: int, w: int, r: int, s: int, scale: float, uint8: bool = False) -> dict:
    # centres over the whole map and a few cells beyond it: windows inside, across the border and off the map
    centre = np.stack([rng.uniform(-3, w + 3, r), rng.uniform(-3, h + 3, r)], 1) / scale
    centre[: r // 4] = np.round(centre[: r // 4] * 2 * scale) / (2 * scale)  # samples on cell centres and edges
    feed = {"centre": centre.astype(np.float32), "idx": rng.integers(0, n, r).astype(np.int64),
            "coords": rng.uniform(-1, 1, (r, 1, s, s)).astype(np.float32)}
    if uint8:
        feed["xq"] = rng.integers(0, 256, (n, h, w, c)).astype(np.uint8)
    else:
        feed["x"] = rng.standard_normal((n, c, h, w)).astype(np.float32)
    return feed


@pytest.mark.parametrize("c,h,w,s,sr,scale", [(8, 12, 12, 5, 2, 1.0), (6, 9, 13, 3, 3, 1.0), (4, 16, 16, 4, 1, 0.5)])
def test_windowed_roi_align_equals_roialign(c, h, w, s, sr, scale):
    """Square maps (Clip) and others (Max/Min), 1-3 samples per bin, a spatial scale: every window, including the
    ones that cross or leave the map, within float rounding of ORT's RoiAlign and of the spec's reference."""
    rng = np.random.default_rng(s * 10 + sr)
    model = _roi_graph(c, h, w, s, sr, scale, half=s / (2 * scale))
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert windowed_roi_aligns(rewritten) == 1
    assert "RoiAlign" not in {n.op_type for n in rewritten.graph.node}
    onnx.checker.check_model(rewritten, full_check=True)
    for n in (1, 3):
        feed = _feed(rng, n, c, h, w, 40, s, scale)
        expected, got = _run(model, feed), _run(rewritten, feed)
        assert got.shape == expected.shape == (40, c, s, s)
        assert np.abs(got - expected).max() <= 1e-5
        rois = np.concatenate([feed["centre"] - s / (2 * scale), feed["centre"] + s / (2 * scale)], 1)
        assert np.abs(got - roi_align_ref(feed["x"], rois, feed["idx"], s, s, scale, sr)).max() <= 1e-5
        assert np.abs(expected).max() > 0.5  # the windows read real values


def test_windowed_roi_align_reads_uint8_rows_and_writes_the_ccr_nhwc_input():
    """The u8s8 file's case: the features are a uint8 NHWC map's DequantizeLinear, and the patches go on, with two
    coordinate channels, quantized into (N, S, S, n * (C + 2)). The rewrite gathers from the uint8 map and writes that
    tensor without the NCHW round trip; at most a rare byte differs by one step (float rounding at a quantization
    boundary)."""
    c, h, w, s, sr, n_points = 8, 12, 12, 5, 2, 6
    rng = np.random.default_rng(3)
    for n in (1, 2):
        # the CCR's windows follow the batch (n_points per image): here the window count is fixed per model
        model = _roi_graph(c, h, w, s, sr, 1.0, half=s / 2, uint8=True, tail=n_points, r=n * n_points)
        rewritten = onnx.ModelProto()
        rewritten.CopyFrom(model)
        assert windowed_roi_aligns(rewritten) == 1
        ops = [node.op_type for node in rewritten.graph.node]
        assert "RoiAlign" not in ops and ops.count("Transpose") == 1  # the uint8 map read as it is, one reorder
        onnx.checker.check_model(rewritten, full_check=True)
        idx = np.repeat(np.arange(n), n_points)  # each image's windows together, as the CCR orders them
        feed = _feed(rng, n, c, h, w, n * n_points, s, 1.0, uint8=True) | {"idx": idx.astype(np.int64)}
        expected, got = _run(model, feed), _run(rewritten, feed)
        assert got.shape == expected.shape == (n, s, s, n_points * (c + 2))
        diff = np.abs(got.astype(int) - expected.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_rois_of_free_width_are_left_to_roialign():
    """The window must be the CCR's fixed width to bound the cells it reads; other rois keep the RoiAlign node."""
    model = _roi_graph(4, 10, 10, 5, 2, 1.0, half=2.5, free_width=True)
    assert windowed_roi_aligns(model) == 0
    assert [n.op_type for n in model.graph.node].count("RoiAlign") == 1
