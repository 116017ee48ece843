"""Pre-activation BatchNorms folded away: the shift into the producing conv's bias, the scale into the next conv.

In the CHS blocks a conv's output ``a`` feeds both the block's Concat and ``BN -> ReLU -> Conv``. The BN cannot be
folded into either conv as it stands, so the u8s8 file runs it as a depthwise QLinearConv, a requantization pass
over the whole map (73 of them: 12 % of the INT8 time on two threads). With every BN scale ``k`` positive,

    relu(k * a + c) = k * relu(a + c / k)

so the conv that makes ``a`` can add ``c / k`` in its bias (``a' = a + c / k``) and the conv after the ReLU can
multiply its input channels by ``k``: the BN is gone and the ReLU reads ``a'`` directly (a uint8 Clip at the
zero point, ~1 us, once quantized). ``a'`` carries a per-channel offset to its other readers; the offset passes
unchanged through Concat (per channel), Add (summed), average/max pooling and Resize (weights summing to 1), and
is taken back out exactly where the shifted tensor meets a BatchNorm (its bias) or an unpadded conv (its bias
minus the weights times the offset). A BN whose offset would reach anything else (a padded conv, RoiAlign's
zero-filled border, a graph output, a Mul) is left as it is. The float graph computes the same function (a test
holds it to 1e-4); only the quantization grid of the offset tensors moves, so the folded graph is calibrated on its
own.

On the bundled model 46 of the 73 BNs fold: each ConvBlock's ``bn2`` and ``bn3``. Its ``bn1`` reads the block's
input, the output of the previous block's Add, whose offset is fixed by the folds before it. Measured (1 CCR,
batch 1, two threads, AMD Zen 4, alternating rounds): u8s8 1.907 -> 1.841 ms against FP32 2.952 ms (1.55x ->
1.62x); ΔNME on ytf68 val +0.025 -> +0.024 points, on the export gate's 135 held-out faces +0.020 -> +0.027. The
FP32 file is not folded: there the fold gains 1-2 % (3.025 -> 2.957 ms), and the FP32 file stays the plain export
every other file and runtime is checked against.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from chs.calibration.onnx_graph import drop_unused_initializers, node_attributes, node_readers
from chs.model.sensitive import float32_nodes

# ops an offset passes through unchanged (per channel): pools average or pick, Resize's weights sum to 1
_PASS_THROUGH = ("AveragePool", "MaxPool", "Resize")
SUFFIX = "_bnshift"


def _shape_channels(model: onnx.ModelProto) -> dict[str, int]:
    """Dimension 1 of every tensor whose shape ONNX shape inference knows."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].dim_value > 0:
            out[vi.name] = int(dims[1].dim_value)
    return out


def _bn_affine(node: onnx.NodeProto, inits: dict) -> tuple[np.ndarray, np.ndarray]:
    """An inference BatchNormalization as ``k * x + c`` per channel."""
    s, b, m, v = (numpy_helper.to_array(inits[t]).astype(np.float64) for t in node.input[1:5])
    eps = node_attributes(node).get("epsilon", 1e-5)
    k = s / np.sqrt(v + eps)
    return k, b - m * k


def _unpadded(node: onnx.NodeProto) -> bool:
    attrs = node_attributes(node)
    return not any(attrs.get("pads", [0])) and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID",
                                                                                      "VALID")


class _Graph:
    def __init__(self, model: onnx.ModelProto, exclude: set[str]):
        self.model, self.exclude = model, exclude
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.readers = node_readers(model.graph)
        self.outputs = {o.name for o in model.graph.output}
        self.channels = _shape_channels(model)

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name]).astype(np.float64)

    def candidate(self, bn: onnx.NodeProto) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
        """(ReLU, convs after the ReLU) when ``bn`` can be folded away, else None."""
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or bn.name in self.exclude or \
                not all(t in self.inits for t in bn.input[1:5]):
            return None
        x = bn.input[0]
        conv = self.producer.get(x)
        if conv is None or conv.op_type != "Conv" or conv.name in self.exclude or x in self.outputs or \
                not all(t in self.inits for t in conv.input[1:] if t):
            return None
        relus = self.readers.get(bn.output[0], [])
        if len(relus) != 1 or relus[0].op_type != "Relu" or relus[0].name in self.exclude or \
                bn.output[0] in self.outputs or relus[0].output[0] in self.outputs:
            return None
        after = self.readers.get(relus[0].output[0], [])
        if not after or any(n.op_type != "Conv" or n.name in self.exclude or n.input[0] != relus[0].output[0] or
                            not all(t in self.inits for t in n.input[1:] if t) for n in after):
            return None
        k, _ = _bn_affine(bn, self.inits)
        if not np.all(k > 0):
            return None
        return relus[0], after

    def reach(self, tensor: str, skip: onnx.NodeProto, seen: set[str] | None = None) -> bool:
        """Whether an offset on ``tensor`` ends, on every path, where it can be taken out exactly. A BN it meets is
        never one being folded: those read conv outputs, and an offset only travels through pass-through ops."""
        seen = set() if seen is None else seen
        if tensor in seen:
            return True
        seen.add(tensor)
        if tensor in self.outputs:
            return False
        for n in self.readers.get(tensor, []):
            if n is skip:
                continue
            if n.op_type == "BatchNormalization" and n.input[0] == tensor and \
                    all(t in self.inits for t in n.input[1:5]):
                continue
            if n.op_type == "Conv" and n.input[0] == tensor and _unpadded(n) and \
                    all(t in self.inits for t in n.input[1:] if t):
                continue
            through = (n.op_type in _PASS_THROUGH and n.input[0] == tensor) or n.op_type == "Add" or \
                (n.op_type == "Concat" and node_attributes(n).get("axis") == 1 and
                 all(i in self.channels for i in n.input))
            if n.op_type == "Resize":
                attrs = node_attributes(n)
                through = through and attrs.get("mode", b"nearest") in (b"nearest", b"linear", "nearest", "linear") \
                    and attrs.get("coordinate_transformation_mode", b"") not in (b"tf_crop_and_resize",
                                                                                "tf_crop_and_resize")
            if not through or not self.reach(n.output[0], skip, seen):
                return False
        return True


def fold_preactivation_batchnorms(model: onnx.ModelProto, exclude: set[str]) -> list[str]:
    """Fold every BN -> ReLU -> Conv whose BN reads a conv's output and whose offset can be taken out exactly
    (module docstring). ``model`` is modified (a graph whose nodes are not uniquely named is left as it is); returns
    the names of the ReLUs that now read a tensor other nodes read too (the quantizer must keep them as ops)."""
    names = [n.name for n in model.graph.node]
    if not all(names) or len(set(names)) != len(names):  # edits are keyed by node name
        return []
    g = _Graph(model, exclude)
    folded: dict[str, tuple] = {}  # BN name -> (BN, ReLU, convs after)
    sources: dict[str, np.ndarray] = {}  # conv output -> offset added by the conv's bias
    for bn in model.graph.node:
        found = g.candidate(bn)
        if found is None or bn.input[0] in sources or not g.reach(bn.input[0], bn):
            continue
        k, c = _bn_affine(bn, g.inits)
        folded[bn.name] = (bn, *found)
        sources[bn.input[0]] = c / k
    if not folded:
        return []

    new_inits: list[onnx.TensorProto] = []
    weights: dict[str, np.ndarray] = {}  # conv name -> its weight, as edited
    biases: dict[str, np.ndarray] = {}  # conv / BN name -> its bias, as edited

    def weight(conv: onnx.NodeProto) -> np.ndarray:
        if conv.name not in weights:
            weights[conv.name] = g.array(conv.input[1])
        return weights[conv.name]

    def bias(node: onnx.NodeProto) -> np.ndarray:
        if node.name not in biases:
            if node.op_type == "BatchNormalization":
                biases[node.name] = g.array(node.input[2])
            else:
                has = len(node.input) > 2 and node.input[2]
                biases[node.name] = g.array(node.input[2]) if has else np.zeros(g.array(node.input[1]).shape[0])
        return biases[node.name]

    # offsets through the graph in topological order; taken out at BNs and unpadded convs
    offset: dict[str, np.ndarray] = dict(sources)
    for n in model.graph.node:
        if n.name in folded:
            continue
        shifted = [i for i in n.input if i in offset]
        if n.op_type == "Conv" and n.output[0] in sources:
            bias(n)[:] += sources[n.output[0]]
        if not shifted:
            continue
        if n.op_type == "BatchNormalization":
            k, _ = _bn_affine(n, g.inits)
            bias(n)[:] -= k * offset[n.input[0]]
        elif n.op_type == "Conv":
            w = weight(n)
            groups = node_attributes(n).get("group", 1)
            per_group_in, per_group_out = w.shape[1], w.shape[0] // groups
            d = offset[n.input[0]].reshape(groups, per_group_in)
            taken = np.einsum("goikl,gi->go", w.reshape(groups, per_group_out, per_group_in, *w.shape[2:]), d)
            bias(n)[:] -= taken.reshape(-1)
        elif n.op_type == "Concat":
            offset[n.output[0]] = np.concatenate([offset[i] if i in offset else np.zeros(g.channels[i])
                                                  for i in n.input])
        elif n.op_type == "Add":
            offset[n.output[0]] = sum(offset[i] for i in shifted)
        else:  # pass-through
            offset[n.output[0]] = offset[n.input[0]]

    # the ReLUs read the conv outputs; the convs after them take the BN scale on their input channels
    shared_relus = []
    for bn, relu, after in folded.values():
        k, _ = _bn_affine(bn, g.inits)
        relu.input[0] = bn.input[0]
        shared_relus.append(relu.name)
        for q in after:
            w = weight(q)
            groups = node_attributes(q).get("group", 1)
            scale = k.reshape(groups, w.shape[1])  # input channel j of group gi is channel gi * C/g + j
            per_group_out = w.shape[0] // groups
            w[:] = (w.reshape(groups, per_group_out, w.shape[1], *w.shape[2:]) *
                    scale[:, None, :, None, None]).reshape(w.shape)
    keep = [n for n in model.graph.node if n.name not in folded]
    taken = set(g.inits)

    def fresh(base: str) -> str:
        """A new initializer name that keeps the module path :func:`chs.model.sensitive.param_module` reads."""
        name, i = base + SUFFIX, 1
        while name in taken:
            name, i = f"{base}{SUFFIX}{i}", i + 1
        taken.add(name)
        return name

    for n in keep:
        if n.name in weights:
            nm = fresh(n.input[1])
            new_inits.append(numpy_helper.from_array(weights[n.name].astype(np.float32), nm))
            n.input[1] = nm
        if n.name in biases:
            at = 2  # Conv: B; BatchNormalization: bias
            has = len(n.input) > at and n.input[at]
            nm = fresh(n.input[at] if has else n.input[1].split(SUFFIX)[0] + "_bias")
            new_inits.append(numpy_helper.from_array(biases[n.name].astype(np.float32), nm))
            if has:
                n.input[at] = nm
            else:
                n.input.append(nm)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    model.graph.initializer.extend(new_inits)
    drop_unused_initializers(model.graph)
    return shared_relus


def write_folded(fp32_path: str | os.PathLike, out_path: str | os.PathLike) -> int:
    """Write ``fp32_path`` with its pre-activation BNs folded (the graph the u8s8 ORT form is calibrated and
    quantized from; the float32 region stays as :func:`chs.model.sensitive.float32_nodes` finds it). Returns how
    many BNs were folded."""
    model = onnx.load(str(fp32_path))
    folded = len(fold_preactivation_batchnorms(model, float32_nodes(model)))
    onnx.save(model, str(out_path))
    return folded


__all__ = ["fold_preactivation_batchnorms", "write_folded"]
