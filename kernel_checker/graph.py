"""`tl.graph.v1`: parsing, well-formedness and shape inference. A graph that fails here is never
evaluated. Shapes are per example (no batch dimension); images are [C, H, W].

Document: {"format": "tl.graph.v1", "weights": {"path", "sha256"} (optional),
"nodes": [{"id", "op", "inputs", "shape", "attrs"}, ...] in topological order, "outputs": [ids]}.
"""

import os
import re
from dataclasses import dataclass, field

from kernel_checker.errors import read_bytes, refuse
from kernel_checker.exact import decode_rational, load_json
from kernel_checker.ops import OPS, REQUIRED
from kernel_checker.tensor import (
    SafetensorsFile,
    Tensor,
    check_sha256,
    decode_inline_tensor,
    numel,
    sha256_hex,
)

RULE = "graph"
_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]*\Z")
_ATTRS_OF_PARAMS = ("weight", "bias", "running_mean", "running_var", "value")


@dataclass
class Node:
    id: str
    op: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    attrs: dict


@dataclass
class Graph:
    """A well-formed graph with its weights store; `sha256` is the hash of the graph file."""

    sha256: str
    nodes: list[Node]
    outputs: tuple[str, ...]
    weights: SafetensorsFile | None
    weights_sha256: str | None
    by_id: dict[str, Node] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict)

    @property
    def input_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "input"]

    def the_input(self, rule: str, path: str) -> Node:
        inputs = self.input_nodes
        if len(inputs) != 1:
            raise refuse(rule, path, f"claims need a graph with exactly one input node, found "
                         f"{len(inputs)}")
        return inputs[0]

    def param(self, ref) -> Tensor:
        """A parameter tensor: a name in the weights file, or an inline const's tensor."""
        return ref if isinstance(ref, Tensor) else self.weights.tensor(ref)

    def parameter_count(self) -> int:
        names, inline = set(), 0
        for node in self.nodes:
            for key in _ATTRS_OF_PARAMS:
                ref = node.attrs.get(key)
                if isinstance(ref, str):
                    names.add(ref)
                elif isinstance(ref, Tensor):
                    inline += numel(ref.shape)
        return inline + sum(numel(self.weights.shape(n)) for n in names)


def _attr(node: dict, spec_kind: str, value: object, path: str, params: SafetensorsFile | None):
    def bad(expected: str):
        return refuse(RULE, path, f"expected {expected}, found {value!r}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if spec_kind == "param":
        if not isinstance(value, str) or not value:  # ("" is falsy: readers testing a bias by
            raise bad("a parameter name (non-empty string)")  # truth would skip it)
        if params is None or value not in params.entries:
            raise refuse(RULE, path, f"parameter {value!r} not found in the weights file")
        return value
    if spec_kind == "param_or_tensor":
        if isinstance(value, str):
            return _attr(node, "param", value, path, params)
        return decode_inline_tensor(value, RULE, path)
    if spec_kind == "int":
        if not is_int(value):
            raise bad("an integer")
        return value
    if spec_kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if spec_kind in ("ints", "ints2"):
        if not isinstance(value, list) or not all(is_int(v) for v in value):
            raise bad("a list of integers")
        if spec_kind == "ints2" and len(value) != 2:
            raise bad("a list of 2 integers")
        return list(value)
    if spec_kind == "rational":
        return decode_rational(value, path, RULE)
    raise AssertionError(spec_kind)


def _conv_out(size: int, k: int, s: int, p: int, d: int, path: str) -> int:
    span = d * (k - 1) + 1
    if s < 1 or p < 0 or d < 1 or k < 1:
        raise refuse(RULE, path, f"expected kernel, stride, dilation >= 1 and padding >= 0, found "
                     f"kernel {k}, stride {s}, padding {p}, dilation {d}")
    if size + 2 * p < span:
        raise refuse(RULE, path, f"window span {span} exceeds padded size {size + 2 * p}")
    return (size + 2 * p - span) // s + 1


def broadcast_shape(a: tuple, b: tuple, path: str) -> tuple[int, ...]:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and x != 1 and y != 1:
            raise refuse(RULE, path, f"shapes {list(a)} and {list(b)} do not broadcast")
        out.append(max(x, y) if min(x, y) != 0 else 0)
    return tuple(reversed(out))


def _norm_axes(axes, rank: int, path: str) -> list[int]:
    if axes is None:
        return list(range(rank))
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise refuse(RULE, path, f"axis {a} out of range for rank {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise refuse(RULE, path, f"repeated axis in {axes}")
    return sorted(out)


def infer_shape(node: Node, shapes: list[tuple], graph: Graph, path: str) -> tuple[int, ...]:
    """The output shape of `node` from its input shapes, or a KernelError at `path`."""
    op, a = node.op, node.attrs

    def pshape(key):
        v = a[key]
        return v.shape if isinstance(v, Tensor) else graph.weights.shape(v)

    def need(cond, msg):
        if not cond:
            raise refuse(RULE, path, f"{op}: {msg}")

    if op == "input":
        return node.shape
    if op == "const":
        return pshape("value")
    if op in ("neg", "relu", "abs", "tanh", "sigmoid", "exp", "log", "sin", "cos", "softmax"):
        return shapes[0]
    if op in ("add", "sub", "mul"):
        return broadcast_shape(shapes[0], shapes[1], path)
    if op == "linear":
        (x,) = shapes
        w = pshape("weight")
        need(len(w) == 2, f"weight must be 2-D [out, in], found {list(w)}")
        need(len(x) >= 1 and x[-1] == w[1], f"input shape {list(x)} does not end in weight's "
             f"in-features {w[1]}")
        if a.get("bias") is not None:
            need(pshape("bias") == (w[0],), f"expected bias shape [{w[0]}], found "
                 f"{list(pshape('bias'))}")
        return x[:-1] + (w[0],)
    if op == "matmul":
        x, y = shapes
        need(len(y) in (1, 2) and len(x) >= 1, f"supported: [..., n, k] or [k] times [k, m] or "
             f"[k]; found {list(x)} and {list(y)}")
        need(x[-1] == y[0], f"inner dimensions differ: {list(x)} and {list(y)}")
        return x[:-1] + y[1:]
    if op == "conv2d":
        (x,) = shapes
        w = pshape("weight")
        g = a["groups"]
        need(len(x) == 3, f"expected input [C, H, W], found {list(x)}")
        need(len(w) == 4, f"expected weight [O, C/groups, kh, kw], found {list(w)}")
        need(g >= 1 and x[0] % g == 0 and w[0] % g == 0 and w[1] * g == x[0],
             f"groups {g} inconsistent with input channels {x[0]} and weight {list(w)}")
        if a.get("bias") is not None:
            need(pshape("bias") == (w[0],), f"expected bias shape [{w[0]}]")
        (sh, sw), (ph, pw), (dh, dw) = a["stride"], a["padding"], a["dilation"]
        return (w[0], _conv_out(x[1], w[2], sh, ph, dh, path),
                _conv_out(x[2], w[3], sw, pw, dw, path))
    if op in ("maxpool2d", "avgpool2d"):
        (x,) = shapes
        need(len(x) == 3, f"expected input [C, H, W], found {list(x)}")
        k, p, d = a["kernel"], a["padding"], a["dilation"]
        s = a["stride"] or k
        a["stride"] = s
        need(p[0] * 2 <= k[0] and p[1] * 2 <= k[1], "padding must be at most half the kernel")
        need(op == "maxpool2d" or d == [1, 1], f"average pooling has no dilation, found {d}")
        return (x[0], _conv_out(x[1], k[0], s[0], p[0], d[0], path),
                _conv_out(x[2], k[1], s[1], p[1], d[1], path))
    if op == "flatten":
        (x,) = shapes
        s = a["start_dim"]
        need(0 <= s <= len(x), f"start_dim {s} out of range for rank {len(x)}")
        return x[:s] + (numel(x[s:]),)
    if op == "reshape":
        (x,) = shapes
        target = list(a["shape"])
        need(sum(1 for t in target if t == -1) <= 1 and all(t >= -1 for t in target),
             f"shape {target}: at most one -1 and no other negatives")
        if -1 in target:
            rest = numel(tuple(t for t in target if t != -1))
            need(rest > 0 and numel(x) % rest == 0, f"cannot reshape {list(x)} to {target}")
            target[target.index(-1)] = numel(x) // rest
        need(numel(tuple(target)) == numel(x), f"cannot reshape {list(x)} to {target}")
        a["shape"] = target
        return tuple(target)
    if op == "transpose":
        (x,) = shapes
        perm = a["perm"]
        need(sorted(perm) == list(range(len(x))), f"perm {perm} is not a permutation of rank "
             f"{len(x)}")
        return tuple(x[p] for p in perm)
    if op == "concat":
        r = len(shapes[0])
        need(-r <= a["axis"] < r, f"axis {a['axis']} out of range for rank {r}")
        ax = a["axis"] % r
        a["axis"] = ax
        for s in shapes:
            need(len(s) == r and all(s[i] == shapes[0][i] for i in range(r) if i != ax),
                 f"input shapes {[list(s) for s in shapes]} differ off axis {ax}")
        return shapes[0][:ax] + (sum(s[ax] for s in shapes),) + shapes[0][ax + 1:]
    if op == "batchnorm":
        (x,) = shapes
        need(len(x) >= 1, "input must have a channel dimension")
        for key in ("weight", "bias", "running_mean", "running_var"):
            need(pshape(key) == (x[0],), f"{key} shape {list(pshape(key))}, expected [{x[0]}]")
        need(a["eps"] > 0, f"eps must be positive, found {a['eps']}")
        return x
    if op in ("sum", "mean"):
        (x,) = shapes
        axes = _norm_axes(a["axes"], len(x), path)
        a["axes"] = axes
        if a["keepdims"]:
            return tuple(1 if i in axes else d for i, d in enumerate(x))
        return tuple(d for i, d in enumerate(x) if i not in axes)
    raise AssertionError(op)


def parse_graph(doc: object, weights: SafetensorsFile | None, sha256: str,
                weights_sha256: str | None = None) -> Graph:
    """Check well-formedness and infer every shape; the declared shapes must agree."""
    if not isinstance(doc, dict):
        raise refuse(RULE, "<graph>", "expected a JSON object")
    if doc.get("format") != "tl.graph.v1":
        raise refuse(RULE, "format", f"expected 'tl.graph.v1', found {doc.get('format')!r}")
    extra = set(doc) - {"format", "weights", "nodes", "outputs", "metadata"}
    if extra:
        raise refuse(RULE, "<graph>", f"unexpected keys {sorted(extra)}")
    nodes_doc = doc.get("nodes")
    if not isinstance(nodes_doc, list) or not nodes_doc:
        raise refuse(RULE, "nodes", "expected a non-empty list of nodes")
    graph = Graph(sha256, [], (), weights, weights_sha256)
    shapes: dict[str, tuple] = {}
    for i, nd in enumerate(nodes_doc):
        path = f"nodes[{i}]"
        if not isinstance(nd, dict):
            raise refuse(RULE, path, "expected a node object")
        extra = set(nd) - {"id", "op", "inputs", "shape", "attrs"}
        if extra:
            raise refuse(RULE, path, f"unexpected keys {sorted(extra)}")
        nid = nd.get("id")
        if not isinstance(nid, str) or not _ID_RE.match(nid):
            raise refuse(RULE, f"{path}.id", f"expected an identifier, found {nid!r}")
        path = f"nodes[{i}] (id {nid!r})"
        if nid in shapes:
            raise refuse(RULE, f"{path}.id", f"duplicate node id {nid!r}")
        op = nd.get("op")
        if not isinstance(op, str) or op not in OPS:
            raise refuse(RULE, f"{path}.op", f"unknown op {op!r}; supported ops: {sorted(OPS)}")
        spec = OPS[op]
        path = f"nodes[{i}] (id {nid!r}, op {op})"
        inputs = nd.get("inputs", [])
        if not isinstance(inputs, list) or not all(isinstance(s, str) for s in inputs):
            raise refuse(RULE, f"{path}.inputs", "expected a list of node ids")
        n_in = len(inputs)
        if n_in < spec.min_inputs or (spec.max_inputs is not None and n_in > spec.max_inputs):
            want = (f"{spec.min_inputs}" if spec.min_inputs == spec.max_inputs
                    else f"at least {spec.min_inputs}")
            raise refuse(RULE, f"{path}.inputs", f"expected {want} inputs, found {n_in}")
        for j, src in enumerate(inputs):
            if src not in shapes:
                why = "itself (a cycle)" if src == nid else (
                    "a later node (not topological order, or a cycle)"
                    if any(isinstance(m, dict) and m.get("id") == src for m in nodes_doc)
                    else "no node")
                raise refuse(RULE, f"{path}.inputs[{j}]", f"input {src!r} refers to {why}")
        attrs_doc = nd.get("attrs", {})
        if not isinstance(attrs_doc, dict):
            raise refuse(RULE, f"{path}.attrs", "expected an object")
        unknown = set(attrs_doc) - set(spec.attrs)
        if unknown:
            raise refuse(RULE, f"{path}.attrs", f"unknown attributes {sorted(unknown)}; "
                         f"{op} takes {sorted(spec.attrs)}")
        attrs = {}
        for name, (kind, default) in spec.attrs.items():
            if name in attrs_doc and attrs_doc[name] is not None:
                attrs[name] = _attr(nd, kind, attrs_doc[name], f"{path}.attrs.{name}", weights)
            elif default is REQUIRED:
                raise refuse(RULE, f"{path}.attrs.{name}", "required attribute missing")
            else:
                attrs[name] = list(default) if isinstance(default, list) else default
        declared = nd.get("shape")
        if not isinstance(declared, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in declared):
            raise refuse(RULE, f"{path}.shape", f"expected a list of positive integers (no empty "
                         f"tensors), found {declared!r}")
        node = Node(nid, op, tuple(inputs), tuple(declared), attrs)
        inferred = infer_shape(node, [shapes[s] for s in inputs], graph, path)
        if tuple(inferred) != node.shape:
            raise refuse(RULE, f"{path}.shape", f"expected shape {list(inferred)} (inferred), "
                         f"found {declared}")
        shapes[nid] = node.shape
        graph.nodes.append(node)
        graph.by_id[nid] = node
    outputs = doc.get("outputs")
    if not isinstance(outputs, list) or not outputs or not all(
            isinstance(o, str) and o in shapes for o in outputs):
        raise refuse(RULE, "outputs", f"expected a non-empty list of node ids, found {outputs!r}")
    graph.outputs = tuple(outputs)
    return graph


def load_graph(path: str) -> Graph:
    """Read a graph file and its weights (bound by sha256, relative to the graph's folder)."""
    data = read_bytes(path, RULE, path, "graph file")
    doc = load_json(data, RULE, path)
    weights = None
    wsha = None
    if isinstance(doc, dict) and doc.get("weights") is not None:
        wdoc = doc["weights"]
        if not isinstance(wdoc, dict) or set(wdoc) != {"path", "sha256"} or not isinstance(
                wdoc["path"], str):
            raise refuse(RULE, "weights", "expected {\"path\": ..., \"sha256\": ...}")
        wpath = os.path.join(os.path.dirname(os.path.abspath(path)), wdoc["path"])
        wdata = read_bytes(wpath, RULE, "weights.path", "weights file")
        check_sha256(wdata, wdoc["sha256"], RULE, "weights.sha256")
        weights = SafetensorsFile(wdata, RULE, "weights")
        wsha = wdoc["sha256"]
    return parse_graph(doc, weights, sha256_hex(data), wsha)
