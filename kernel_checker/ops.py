"""The closed op table of `tl.graph.v1` (DESIGN.md, "Graph IR"). One row per op: arity, attributes
(kind, default; `REQUIRED` when there is none), and whether the kernel evaluates it yet. Shape
inference (graph.py) and exact semantics (semantics.py) key on this table; a test fails when an
op lacks a row in either."""

from dataclasses import dataclass

REQUIRED = object()
UNBOUNDED = None


@dataclass(frozen=True)
class OpSpec:
    min_inputs: int
    max_inputs: int | None
    attrs: dict  # name -> (kind, default or REQUIRED)
    evaluated: bool = True


_UNARY = OpSpec(1, 1, {})
_BINARY = OpSpec(2, 2, {})
_POOL = {"kernel": ("ints2", REQUIRED), "stride": ("ints2", None), "padding": ("ints2", [0, 0]),
         "dilation": ("ints2", [1, 1])}

OPS: dict[str, OpSpec] = {
    "input": OpSpec(0, 0, {}),
    "const": OpSpec(0, 0, {"value": ("param_or_tensor", REQUIRED)}),
    "linear": OpSpec(1, 1, {"weight": ("param", REQUIRED), "bias": ("param", None)}),
    "matmul": _BINARY,
    "conv2d": OpSpec(1, 1, {"weight": ("param", REQUIRED), "bias": ("param", None),
                            "stride": ("ints2", [1, 1]), "padding": ("ints2", [0, 0]),
                            "dilation": ("ints2", [1, 1]), "groups": ("int", 1)}),
    "add": _BINARY,
    "sub": _BINARY,
    "mul": _BINARY,
    "neg": _UNARY,
    "relu": _UNARY,
    "abs": _UNARY,
    "maxpool2d": OpSpec(1, 1, dict(_POOL)),
    "avgpool2d": OpSpec(1, 1, dict(_POOL, count_include_pad=("bool", True))),
    "flatten": OpSpec(1, 1, {"start_dim": ("int", 0)}),
    "reshape": OpSpec(1, 1, {"shape": ("ints", REQUIRED)}),
    "transpose": OpSpec(1, 1, {"perm": ("ints", REQUIRED)}),
    "concat": OpSpec(1, UNBOUNDED, {"axis": ("int", REQUIRED)}),
    "batchnorm": OpSpec(1, 1, {"weight": ("param", REQUIRED), "bias": ("param", REQUIRED),
                               "running_mean": ("param", REQUIRED),
                               "running_var": ("param", REQUIRED), "eps": ("rational", REQUIRED)}),
    "sum": OpSpec(1, 1, {"axes": ("ints", None), "keepdims": ("bool", False)}),
    "mean": OpSpec(1, 1, {"axes": ("ints", None), "keepdims": ("bool", False)}),
    "tanh": _UNARY,
    "sigmoid": _UNARY,
    "exp": _UNARY,
    "log": _UNARY,
    "sin": _UNARY,
    "cos": _UNARY,
    "softmax": OpSpec(1, 1, {"axis": ("int", -1)}, evaluated=False),
}
