"""RoiAlign: torch op vs an independent NumPy reference of the ONNX spec, vs ONNX Runtime, gradients."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from roi_align_ref import roi_align_ref

from chs.model.roi_align import roi_align


def _case(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 3, 9, 11)).astype(np.float32)
    centres = rng.uniform(-2, 12, size=(13, 2))  # some windows hang over or fall off the map
    half = rng.uniform(0.5, 4, size=(13, 2))
    rois = np.concatenate([centres - half, centres + half], 1).astype(np.float32)
    idx = rng.integers(0, 2, size=13).astype(np.int64)
    return x, rois, idx


@pytest.mark.parametrize("scale,sr", [(1.0, 2), (0.5, 1), (2.0, 3)])
def test_matches_numpy_reference(scale, sr):
    x, rois, idx = _case()
    ours = roi_align(torch.from_numpy(x), torch.from_numpy(rois), torch.from_numpy(idx), (5, 5), scale, sr)
    ref = roi_align_ref(x, rois, idx, 5, 5, scale, sr)
    assert np.abs(ours.numpy() - ref).max() <= 1e-5


def test_matches_onnxruntime_roialign_node():
    x, rois, idx = _case(1)
    node = helper.make_node("RoiAlign", ["x", "rois", "idx"], ["y"], mode="avg", output_height=5, output_width=5,
                            sampling_ratio=2, spatial_scale=1.0, coordinate_transformation_mode="half_pixel")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape),
         helper.make_tensor_value_info("rois", TensorProto.FLOAT, rois.shape),
         helper.make_tensor_value_info("idx", TensorProto.INT64, idx.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [13, 3, 5, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x, "rois": rois, "idx": idx})
    ours = roi_align(torch.from_numpy(x), torch.from_numpy(rois), torch.from_numpy(idx), (5, 5), 1.0, 2)
    assert np.abs(ours.numpy() - y).max() <= 1e-5


def test_gradients_flow_to_features_and_boxes():
    x, rois, idx = _case(2)
    xt = torch.from_numpy(x).requires_grad_()
    rt = torch.from_numpy(rois).requires_grad_()
    roi_align(xt, rt, torch.from_numpy(idx), (5, 5), 1.0, 2).square().sum().backward()
    assert xt.grad.abs().sum() > 0 and rt.grad.abs().sum() > 0
    # finite-difference check of d/d(box x0) on one in-bounds ROI
    r0 = torch.tensor([[2.3, 2.1, 6.7, 5.9]], dtype=torch.float64)
    feat = torch.from_numpy(x[:1]).double()
    i0 = torch.zeros(1, dtype=torch.int64)
    assert torch.autograd.gradcheck(lambda r: roi_align(feat, r, i0, (3, 3), 1.0, 2), (r0.requires_grad_(),))
