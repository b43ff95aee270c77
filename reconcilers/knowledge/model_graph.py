"""The shipped model's graph, rewritten once into fused operators onnxruntime runs faster; same weights.

all-MiniLM-L6-v2 as shipped (an exporter's graph of `scaled_dot_product_attention`) runs each attention block
as ~40 small nodes: three 384x384 matrix products, shape arithmetic, a mask built with GatherND, Softmax, an
`IsNaN`/`Where` guard. onnxruntime's own fusions (level ALL) do not recognise that pattern, nor its GELU
(Div/Erf/Add/Mul/Mul), and neither does its offline transformer optimizer (tried: it fuses SkipLayerNorm and
BiasGelu, not the attention). Here each block becomes one `com.microsoft.Attention` (one packed Q/K/V product,
the mask as an int32 key mask) and each GELU one `com.microsoft.Gelu`; onnxruntime then fuses bias + GELU and
the residual LayerNorms by itself. ~300 nodes become ~60: the per-node cost and the Q/K/V passes over the
activations are what a one-line query pays beyond the matrix products.

The weights are not changed: they stay int8 with their per-channel scales (Cast and Mul, folded by
onnxruntime at load exactly as before); Q, K and V are concatenated along their output channels, which keeps
each channel's scale. The vectors differ from the plain graph's only by float rounding order (a test holds
them to fastembed's). Anything in the graph that does not match the expected shape leaves it unchanged
(`fuse` returns None), so a different model is run as it is, never mis-rewritten.

Needs the `onnx` package, but loads only its protobuf classes (see _load_proto), and only in the embedding
worker when the fused file of a model directory must be made (model_files.fused_model_file); later starts load
that file, verified by sha256.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt


def _load_proto() -> ModuleType:
    """onnx's generated protobuf module alone. `import onnx` costs 1.2-4 s here (most of it ml_dtypes, which
    its helpers import), paid at the first start of every new data directory; its protobuf classes cost 0.3 s."""
    spec = importlib.util.find_spec("onnx")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("onnx is not installed")
    path = f"{next(iter(spec.submodule_search_locations))}/onnx_ml_pb2.py"
    module_spec = importlib.util.spec_from_file_location("_stratum_onnx_ml_pb2", path)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


pb = _load_proto()
_FLOAT, _INT8, _INT32 = 1, 3, 6                 # TensorProto.DataType
_DTYPES = {1: np.float32, 3: np.int8, 6: np.int32, 7: np.int64, 9: np.bool_}


def to_array(t: Any) -> npt.NDArray[Any]:
    """A tensor's values (the shipped model stores every constant as raw little-endian bytes)."""
    if t.data_type not in _DTYPES or not t.raw_data:
        raise _NoMatch(f"{t.name}: a constant stored other than as raw {list(_DTYPES)} data")
    return np.frombuffer(t.raw_data, dtype=np.dtype(_DTYPES[t.data_type]).newbyteorder("<")).reshape(tuple(t.dims))


def from_array(values: npt.NDArray[Any], name: str) -> Any:
    """A constant tensor holding `values` (float32 or int8)."""
    kind = {np.dtype(np.float32): _FLOAT, np.dtype(np.int8): _INT8}[values.dtype]
    return pb.TensorProto(name=name, dims=list(values.shape), data_type=kind,
                          raw_data=np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tobytes())


def make_node(op: str, inputs: list[str], outputs: list[str], name: str = "", domain: str = "",
              **ints: int) -> Any:
    """A node with integer attributes."""
    attrs = [pb.AttributeProto(name=k, type=pb.AttributeProto.INT, i=v) for k, v in sorted(ints.items())]
    return pb.NodeProto(op_type=op, input=inputs, output=outputs, name=name, domain=domain, attribute=attrs)

NUM_HEADS = 12
HIDDEN = 384


@dataclass(frozen=True, slots=True)
class _Attention:
    """One attention block found in the graph: its input, the three projections and its output."""

    x: str                                   # the block's input (the previous LayerNorm's output)
    weights: tuple[str, str, str]            # Q, K, V weight tensors (outputs of Mul(Cast(int8), scale))
    biases: tuple[str, str, str]             # Q, K, V bias initializers
    output: str                              # the block's output: (batch, seq, hidden) before the out-projection


class _Graph:
    """Producer/consumer lookups over an onnx graph."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer: dict[str, Any] = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def made_by(self, name: str, op: str) -> Any:
        """The node producing `name`, which must be an `op`."""
        node = self.producer.get(name)
        if node is None or node.op_type != op:
            raise _NoMatch(f"{name} is not made by {op}")
        return node

    def only_consumer(self, name: str, op: str) -> Any:
        """The one node reading `name`, which must be an `op`."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op:
            raise _NoMatch(f"{name} is not read by exactly one {op}")
        return users[0]

    def scalar(self, name: str) -> float:
        """The value of a one-element initializer."""
        if name not in self.inits:
            raise _NoMatch(f"{name} is not a constant")
        value = to_array(self.inits[name])
        if value.size != 1:
            raise _NoMatch(f"{name} is not a scalar")
        return float(value.reshape(-1)[0])

    def int8_weight(self, name: str) -> tuple[Any, Any]:
        """(int8 values, per-channel scales) of a weight made by Mul(Cast(int8 initializer), scale)."""
        mul = self.made_by(name, "Mul")
        cast = self.made_by(mul.input[0], "Cast")
        q, scale = self.inits.get(cast.input[0]), self.inits.get(mul.input[1])
        if q is None or scale is None or q.data_type != _INT8 or len(q.dims) != 2:
            raise _NoMatch(f"{name} is not an int8 weight with scales")
        if list(scale.dims) != [1, q.dims[1]]:
            raise _NoMatch(f"{name} has no per-output-channel scale")
        return q, scale


class _NoMatch(Exception):
    """The graph is not the shape this rewrite knows."""


def _projection(g: _Graph, add_out: str) -> tuple[str, str, str]:
    """(input, weight, bias) of `add_out` = MatMul(input, weight) + bias."""
    add = g.made_by(add_out, "Add")
    matmul = g.made_by(add.input[0], "MatMul")
    if add.input[1] not in g.inits:
        raise _NoMatch(f"{add.name}: bias is not a constant")
    return matmul.input[0], matmul.input[1], add.input[1]


def _through(g: _Graph, name: str, ops: tuple[str, ...]) -> str:
    """Walk up from `name` through a chain of single-input-relevant nodes of `ops` (in that order), returning
    the first input of the last one."""
    for op in ops:
        name = g.made_by(name, op).input[0]
    return name


def _find_attention(g: _Graph, pv: Any) -> _Attention:
    """The block around `pv`, the MatMul of attention probabilities by V."""
    probs, v_heads = pv.input[0], pv.input[1]
    where = g.made_by(probs, "Where")                          # NaN guard: fully masked rows become 0
    softmax = g.made_by(where.input[2], "Softmax")
    g.made_by(where.input[0], "IsNaN")
    scores = g.made_by(g.made_by(softmax.input[0], "Add").input[0], "MatMul")
    q_scaled, k_scaled = g.made_by(scores.input[0], "Mul"), g.made_by(scores.input[1], "Mul")
    scale = g.scalar(q_scaled.input[1]) * g.scalar(k_scaled.input[1])
    if not math.isclose(scale, 1.0 / math.sqrt(HIDDEN // NUM_HEADS), rel_tol=1e-6):
        raise _NoMatch(f"{scores.name}: attention scale {scale} is not 1/sqrt(head size)")
    q_x, wq, bq = _projection(g, _through(g, q_scaled.input[0], ("Transpose", "Reshape")))
    k_x, wk, bk = _projection(g, _through(g, k_scaled.input[0], ("Reshape", "Transpose", "Reshape", "Transpose",
                                                                  "Reshape")))
    v_x, wv, bv = _projection(g, _through(g, v_heads, ("Transpose", "Reshape")))
    if not q_x == k_x == v_x:
        raise _NoMatch(f"{pv.name}: Q, K and V do not share one input")
    merged = g.only_consumer(g.only_consumer(pv.output[0], "Transpose").output[0], "Reshape")
    return _Attention(q_x, (wq, wk, wv), (bq, bk, bv), merged.output[0])


def _attention_nodes(g: _Graph, block: _Attention, index: int, mask: str) -> list[Any]:
    """The fused block: packed int8 Q/K/V weights (dequantized by Cast and Mul as before) and one Attention."""
    qs, scales = zip(*(g.int8_weight(w) for w in block.weights), strict=True)
    packed_q = np.concatenate([to_array(q) for q in qs], axis=1)
    packed_s = np.concatenate([to_array(s) for s in scales], axis=1)
    bias = np.concatenate([to_array(g.inits[b]) for b in block.biases])
    prefix = f"fused_attention_{index}"
    g.model.graph.initializer.extend([from_array(packed_q, f"{prefix}.qkv_q"),
                                      from_array(packed_s, f"{prefix}.qkv_scale"),
                                      from_array(bias.astype(np.float32), f"{prefix}.qkv_bias")])
    return [
        make_node("Cast", [f"{prefix}.qkv_q"], [f"{prefix}.qkv_f"], to=_FLOAT),
        make_node("Mul", [f"{prefix}.qkv_f", f"{prefix}.qkv_scale"], [f"{prefix}.qkv_w"]),
        make_node("Attention", [block.x, f"{prefix}.qkv_w", f"{prefix}.qkv_bias", mask], [block.output],
                         name=prefix, domain="com.microsoft", num_heads=NUM_HEADS),
    ]


def _gelu_nodes(g: _Graph) -> list[tuple[Any, Any]]:
    """(last node of an exact-erf GELU, its replacement): x * (0.5 * (1 + erf(x / sqrt 2)))."""
    out: list[tuple[Any, Any]] = []
    for erf in (n for n in g.model.graph.node if n.op_type == "Erf"):
        div = g.made_by(erf.input[0], "Div")
        if not math.isclose(g.scalar(div.input[1]), math.sqrt(2.0), rel_tol=1e-6):
            raise _NoMatch(f"{div.name}: not x / sqrt(2)")
        add = g.only_consumer(erf.output[0], "Add")
        if not math.isclose(g.scalar(add.input[1]), 1.0):
            raise _NoMatch(f"{add.name}: not 1 + erf")
        half = g.only_consumer(add.output[0], "Mul")
        if not math.isclose(g.scalar(half.input[0]), 0.5):
            raise _NoMatch(f"{half.name}: not 0.5 * (1 + erf)")
        last = g.only_consumer(half.output[0], "Mul")
        x = div.input[0]
        if sorted(last.input) != sorted([x, half.output[0]]):
            raise _NoMatch(f"{last.name}: not x * gelu factor")
        out.append((last, make_node("Gelu", [x], [last.output[0]], name=f"fused_gelu_{len(out)}",
                                           domain="com.microsoft")))
    return out


def _prune(model: Any) -> None:
    """Drop nodes and initializers no graph output depends on (the replaced blocks' leftovers)."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    needed = {o.name for o in graph.output}
    keep: set[int] = set()
    stack = list(needed)
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in keep:
            continue
        keep.add(id(node))
        for i in node.input:
            if i and i not in needed:
                needed.add(i)
                stack.append(i)
    nodes = [n for n in graph.node if id(n) in keep]
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(inits)


def fuse(model_bytes: bytes) -> bytes | None:
    """The serialized model with fused attention and GELU, or None when its graph is not the expected one."""
    model = pb.ModelProto.FromString(model_bytes)
    try:
        _rewrite(model)
    except _NoMatch:
        return None
    _prune(model)
    out: bytes = model.SerializeToString()
    return out


def _rewrite(model: Any) -> None:
    """Replace every attention block and GELU of `model` in place (_NoMatch otherwise: `model` is dropped)."""
    g = _Graph(model)
    pvs = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in g.inits
           and g.producer.get(n.input[0]) is not None and g.producer[n.input[0]].op_type == "Where"]
    if not pvs:
        raise _NoMatch("no attention block found")
    if "attention_mask" not in {i.name for i in model.graph.input}:
        raise _NoMatch("no attention_mask input")
    blocks = [_find_attention(g, pv) for pv in pvs]
    gelus = _gelu_nodes(g)
    mask = "fused_attention_mask_i32"
    new: list[Any] = [make_node("Cast", ["attention_mask"], [mask], to=_INT32)]
    for i, block in enumerate(blocks):
        new.extend(_attention_nodes(g, block, i, mask))
    replaced = {b.output for b in blocks} | {last.output[0] for last, _ in gelus}
    # The fused nodes write the same names: their old producers go now, what only fed those goes in _prune.
    nodes = [n for n in model.graph.node if not any(o in replaced for o in n.output)]
    # Topological order: the new nodes' inputs are each block's input, made before the block's old output
    # was; inserting each fused node just before the first reader of its output keeps the order valid.
    readers = {o: min((k for k, n in enumerate(nodes) if o in n.input), default=len(nodes)) for o in replaced}
    inserts: dict[int, list[Any]] = {}
    inserts.setdefault(0, []).append(new[0])
    for i, block in enumerate(blocks):
        inserts.setdefault(readers[block.output], []).extend(new[1 + 3 * i: 4 + 3 * i])
    for last, gelu in gelus:
        inserts.setdefault(readers[last.output[0]], []).append(gelu)
    ordered: list[Any] = []
    for k, node in enumerate(nodes):
        ordered.extend(inserts.get(k, []))
        ordered.append(node)
    ordered.extend(inserts.get(len(nodes), []))
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(pb.OperatorSetIdProto(domain="com.microsoft", version=1))
