"""A tanh MLP (a small PINN-style network) with kernel-checked output bounds:
`python examples/enclosures/pinn_tanh.py [--steps 1500] [--grid 8]`.

A 2-16-16-1 tanh network u(t, x) is fitted in NumPy (fixed seed) to the heat-equation solution
exp(-pi^2 t / 4) sin(pi x) on [0, 1]^2; its weights are rounded to float32, whose values are
exact dyadics. The domain is cut into grid x grid boxes. For each box:

1. the Arb oracle (`mlp` request, through the same protocol as `tl oracle arb`) returns a ball
   for u over the box;
2. the network is written out as an expression AST (untrusted, oracles.arb.mlp_to_enclosures)
   and the kernel checks the Enclosure claim "for all (t, x) in the box, u(t, x) in the ball"
   with its own tanh enclosures: level `proved`, no assumptions.

The union of the boxes' balls bounds u on the whole domain; dense sampling must lie inside.
When the kernel's graph semantics evaluates tanh (kernel_checker/ops.py), the same bounds are
also proved as a `bounds` claim on the tl.graph.v1 graph by the `ibp` rule.
"""

import argparse
import tempfile
import time

import numpy as np
from flint import fmpq

from kernel_checker.enclosure import check_enclosure, request_sha256
from kernel_checker.exact import decode_ball
from oracles.arb import mlp_to_enclosures, run_request


def target(t, x):
    return np.exp(-np.pi**2 * t / 4) * np.sin(np.pi * x)


def train(steps: int, seed: int = 0):
    """Full-batch Adam on 400 points (float64), then float32 weights."""
    rng = np.random.default_rng(seed)
    sizes = [2, 16, 16, 1]
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        params += [rng.normal(0, np.sqrt(1 / a), (b, a)), np.zeros(b)]
    pts = rng.uniform(0, 1, (400, 2))
    y = target(pts[:, 0], pts[:, 1])
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for step in range(1, steps + 1):
        acts = [pts.T]
        for k in range(0, len(params), 2):
            z = params[k] @ acts[-1] + params[k + 1][:, None]
            acts.append(np.tanh(z) if k < len(params) - 2 else z)
        err = acts[-1][0] - y
        delta = (2 / len(y)) * err[None, :]
        grads = [None] * len(params)
        for k in range(len(params) - 2, -1, -2):
            grads[k] = delta @ acts[k // 2].T
            grads[k + 1] = delta.sum(axis=1)
            if k:
                delta = (params[k].T @ delta) * (1 - acts[k // 2] ** 2)
        for i, g in enumerate(grads):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            params[i] -= 0.01 * (m[i] / (1 - 0.9**step)) / (np.sqrt(v[i] / (1 - 0.999**step))
                                                            + 1e-8)
    return [p.astype(np.float32) for p in params], float(np.mean(err**2))


def f32(a) -> list:
    return [f"f32:{int(b):08x}" for b in np.asarray(a, np.float32).view(np.uint32).ravel()]


def forward(params, pts):
    h = pts.T.astype(np.float64)
    for k in range(0, len(params), 2):
        z = params[k].astype(np.float64) @ h + params[k + 1].astype(np.float64)[:, None]
        h = np.tanh(z) if k < len(params) - 2 else z
    return h[0]


def graph_route(params, boxes):
    """IBP on the graph, when the kernel's semantics evaluates tanh."""
    from kernel_checker.ops import OPS

    if not OPS["tanh"].evaluated:
        return "skipped: the kernel's graph semantics does not evaluate tanh yet"
    import kernel_checker
    from kernel_checker.rules import box_interval
    from kernel_checker.semantics import evaluate
    from tl_dsl import claims, proof
    from tl_dsl.builder import GraphBuilder

    g = GraphBuilder()
    h = g.input([2])
    for k in range(0, len(params), 2):
        h = g.linear(h, params[k], params[k + 1])
        if k < len(params) - 2:
            h = g.tanh(h)
    g.output(h)
    graph = kernel_checker.load_graph(g.save(tempfile.mkdtemp()))
    proved = 0
    for lo, hi in boxes:
        y = evaluate(graph, box_interval(claims.box(lo, hi), (2,)))[graph.outputs[0]]
        b_lo, b_hi = y.bounds(0)
        c = claims.bounds(graph, claims.box(lo, hi), [b_lo], [b_hi])
        proved += proof.check(c, proof.ibp(), graph).level.label == "proved"
    return f"{proved}/{len(boxes)} boxes proved by ibp on the graph"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--grid", type=int, default=8)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    params, mse = train(args.steps)
    print(f"trained 2-16-16-1 tanh net: mse {mse:.2e} ({time.perf_counter() - t0:.1f} s)")
    layers = [{"weight": [f32(row) for row in params[k]], "bias": f32(params[k + 1]),
               "activation": "tanh" if k < len(params) - 2 else "identity"}
              for k in range(0, len(params), 2)]
    n = args.grid
    boxes, lows, highs, t1 = [], [], [], time.perf_counter()
    for i in range(n):
        for j in range(n):
            lo, hi = [fmpq(i, n), fmpq(j, n)], [fmpq(i + 1, n), fmpq(j + 1, n)]
            boxes.append((lo, hi))
            req = {"kind": "mlp", "layers": layers, "prec_bits": 96,
                   "input": {"lo": [str(v) for v in lo], "hi": [str(v) for v in hi]}}
            resp = run_request(req)
            assert resp["status"] == "ok", resp
            ev = {"tool": "python-flint", "version": resp["flint_version"], "prec_bits": "96",
                  "request_sha256": request_sha256(req)}
            (claim,) = mlp_to_enclosures(req, resp)
            thm = check_enclosure({"claim": claim, "certificate": {"rule": "enclosure",
                                                                   "oracle": ev}})
            assert thm.level.label == "proved" and not thm.assumptions
            b_lo, b_hi = decode_ball(resp["balls"][0], "ball")
            lows.append(b_lo)
            highs.append(b_hi)
    lo, hi = min(lows), max(highs)
    print(f"{n * n} boxes: every enclosure proved by the kernel (no assumptions) in "
          f"{time.perf_counter() - t1:.2f} s")
    print(f"u(t, x) in [{float(lo):.4f}, {float(hi):.4f}] for all (t, x) in [0, 1]^2")
    pts = np.random.default_rng(1).uniform(0, 1, (20000, 2))
    u = forward(params, pts)
    print(f"sampled range [{u.min():.4f}, {u.max():.4f}] (inside: "
          f"{float(lo) <= u.min() and u.max() <= float(hi)})")
    assert float(lo) <= u.min() and u.max() <= float(hi)
    print("graph route: " + graph_route(params, boxes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
