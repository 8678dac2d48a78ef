"""A small end-to-end run on built-in data (the first `tl demo`): `python examples/blobs_demo.py`.
A 2-16-16-3 ReLU classifier is trained in
NumPy on three Gaussian blobs (fixed seed), then: a robustness claim at a small radius is proved
by the kernel's interval replay; at a large radius the kernel refuses it, an attack finds a
point, and the kernel checks that counterexample exactly. Bundles are written, re-checked in a
fresh process, and audited."""

import os
import time

import numpy as np

import kernel_checker
from oracles.attack import random_search
from oracles.numpy_forward import NumpyGraph
from stdlib.robustness import robust
from tl_dsl import claims, proof
from tl_dsl.audit import audit_bundle, format_audit
from tl_dsl.builder import Linear, ReLU, Sequential
from tl_dsl.printing import format_theorem

CENTRES = np.array([[0.25, 0.25], [0.75, 0.3], [0.5, 0.75]])


def blobs(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + 0.08 * rng.standard_normal((n_per_class, 2)) for c in CENTRES])
    y = np.repeat(np.arange(len(CENTRES)), n_per_class)
    return np.clip(x, 0, 1), y


def train_mlp(seed: int = 0, steps: int = 400) -> list[np.ndarray]:
    """Full-batch gradient descent with softmax cross-entropy; returns float32 W1,b1,W2,b2,W3,b3."""
    rng = np.random.default_rng(seed)
    x, y = blobs(100, seed)
    sizes = [2, 16, 16, 3]
    ws = [rng.standard_normal((o, i)) * np.sqrt(2 / i) for i, o in zip(sizes, sizes[1:])]
    bs = [np.zeros(o) for o in sizes[1:]]
    onehot = np.eye(3)[y]
    for _ in range(steps):
        acts = [x]
        for k, (w, b) in enumerate(zip(ws, bs)):
            z = acts[-1] @ w.T + b
            acts.append(np.maximum(z, 0) if k < 2 else z)
        p = np.exp(acts[-1] - acts[-1].max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = (p - onehot) / len(x)
        for k in reversed(range(3)):
            gw, gb = grad.T @ acts[k], grad.sum(0)
            if k:
                grad = (grad @ ws[k]) * (acts[k] > 0)
            ws[k] -= 0.5 * gw
            bs[k] -= 0.5 * gb
    return [a.astype(np.float32) for pair in zip(ws, bs) for a in pair]


def run_demo(out_dir: str = "tl-out/blobs") -> int:
    t0 = time.perf_counter()
    w1, b1, w2, b2, w3, b3 = train_mlp()
    graph_path = Sequential([Linear(w1, b1), ReLU(), Linear(w2, b2), ReLU(), Linear(w3, b3)]
                            ).save(os.path.join(out_dir, "net"), [2])
    graph = kernel_checker.load_graph(graph_path)
    net = NumpyGraph(graph_path)
    xt, yt = blobs(20, seed=1)
    acc = float((net.forward(xt).argmax(1) == yt).mean())
    print(f"trained a 2-16-16-3 ReLU classifier on 3 blobs (test accuracy {acc:.2f}); graph "
          f"{graph_path} sha256 {graph.sha256[:16]}")
    x0, label = np.float32(xt[0]), int(yt[0])
    print(f"input x0 = {x0.tolist()} (float32, read exactly), label {label}\n")
    bundles = []

    small = robust(graph, x0, "1/100", label, clamp=(0, 1), name="robust_small")
    thm = proof.check(small, proof.ibp(), graph)
    print("[1] robustness at radius 1/100, proved by the kernel's interval replay:")
    print("    " + format_theorem(thm).replace("\n", "\n    "))
    bundles.append(proof.write_bundle(os.path.join(out_dir, "robust_small.bundle.json"), small,
                                      proof.ibp(), graph_path, graph, {"tool": "tl demo"}))

    big = robust(graph, x0, "1/2", label, clamp=(0, 1), name="robust_big")
    print("\n[2] robustness at radius 1/2:")
    try:
        proof.check(big, proof.ibp(), graph)
        print("    unexpectedly proved")
        return 1
    except kernel_checker.KernelError as err:
        print(f"    the kernel refuses the interval certificate: {err}")
    box = big.input_set.as_box()
    lo = np.array([float(v) for v in box.lo])
    hi = np.array([float(v) for v in box.hi])
    cand = random_search(net, lo, hi, big.unsafe)
    if cand is None:
        print("    the attack found no counterexample")
        return 1
    cex = claims.counterexample(big, claims.clamp_into(cand, box))
    thm_cex = proof.check(cex, proof.counterexample_cert(), graph)
    print(f"    attack found x* = {cand.tolist()}; the kernel checked it exactly:")
    print("    " + format_theorem(thm_cex).replace("\n", "\n    "))
    bundles.append(proof.write_bundle(os.path.join(out_dir, "robust_big.cex.bundle.json"), cex,
                                      proof.counterexample_cert(), graph_path, graph,
                                      {"tool": "tl demo", "producer": "oracles.attack"}))

    print("\n[3] re-checking every bundle in a fresh process (python -m kernel_checker):")
    for b in bundles:
        ok, msg = proof.recheck_in_fresh_process(b)
        print(f"    {b}: {msg}")
        if not ok:
            return 1
    print(f"\n[4] tl audit {bundles[0]}")
    report = audit_bundle(bundles[0])
    print("    " + format_audit(report).replace("\n", "\n    "))
    print(f"\ndone in {time.perf_counter() - t0:.1f} s; bundles in {out_dir}/")
    return 0 if report["permitted"] else 1


if __name__ == "__main__":
    raise SystemExit(run_demo())
