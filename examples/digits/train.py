"""Train the two small digit classifiers shipped in `tl_dsl/data/digits/` and export them.

    python examples/digits/train.py [--out tl_dsl/data/digits]

Data: scikit-learn's bundled 8x8 digits (`load_digits`, no download), pixels scaled to [0, 1] by
dividing by 16 (exact in binary and decimal), split 75/25 with `train_test_split(test_size=0.25,
random_state=0, stratify=y)`. Models use only the ops the kernel's `crown` rule supports (linear,
conv2d, relu, flatten, avgpool2d):

- mlp: [64] -> fc1 (32) -> relu1 -> fc2 (32) -> relu2 -> logits (10)
- cnn: [1, 8, 8] -> conv1 (8, 3x3, pad 1) -> relu1 -> pool1 (avg 2x2) -> conv2 (16, 3x3, pad 1)
  -> relu2 -> flatten -> logits (10)

Training (CPU, a few seconds): Adam on inputs with uniform noise of +-NOISE (clipped to [0, 1]),
then a few epochs with an added interval-bound-propagation (IBP) term at a small radius, which
makes the models easier to certify at radii 0.005-0.05. The script then exports each model with
GraphBuilder, loads it back with the kernel, checks the kernel's exact evaluation against torch
float32 on 5 test images, and writes test_set.json (first 100 test images, exact decimals) and
models.json. Needs torch and scikit-learn (training only; nothing at run time does).
"""

import argparse
import json
import os
import sys
import time
from decimal import Decimal
from fractions import Fraction

import numpy as np
import torch
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from kernel_checker import load_graph  # noqa: E402
from kernel_checker.exact import decode_rational  # noqa: E402
from kernel_checker.rules import point_interval  # noqa: E402
from kernel_checker.semantics import evaluate  # noqa: E402
from tl_dsl.builder import GraphBuilder  # noqa: E402

SEED = 0
NOISE = 0.05  # uniform input noise during training
IBP_EPS = 0.03  # radius of the IBP term in the last epochs
IBP_WEIGHT = 0.5
N_SHIPPED = 100  # test images written to test_set.json
N_CHECKED = 5  # test images checked kernel vs torch at export


def load_data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x_int = d.data.astype(np.int64)  # pixel values 0..16
    y = d.target.astype(np.int64)
    xi_tr, xi_te, y_tr, y_te = train_test_split(x_int, y, test_size=0.25, random_state=0,
                                                stratify=y)
    return xi_tr, xi_te, y_tr, y_te


def make_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 10))


def make_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)),
                         nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 10))


def ibp_logits(model: nn.Sequential, x: torch.Tensor, eps: float, y: torch.Tensor):
    """Worst-case logits (lower bound for the true class, upper for others) over the L-inf ball
    of radius eps around x intersected with [0, 1], by interval bound propagation."""
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            mid, rad = (hi + lo) / 2, (hi - lo) / 2
            mid = layer(mid)
            rad = (nn.functional.linear(rad, layer.weight.abs()) if isinstance(layer, nn.Linear)
                   else nn.functional.conv2d(rad, layer.weight.abs(), padding=layer.padding))
            lo, hi = mid - rad, mid + rad
        else:  # relu, avgpool, flatten, unflatten: monotone
            lo, hi = layer(lo), layer(hi)
    onehot = nn.functional.one_hot(y, 10).bool()
    return torch.where(onehot, lo, hi)


def train(model, x_tr, y_tr, epochs, ibp_epochs, lr=1e-2, batch=64):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    total = epochs + ibp_epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    ce = nn.CrossEntropyLoss()
    n = len(x_tr)
    for epoch in range(total):
        model.train()
        perm = torch.randperm(n)
        ibp = epoch >= epochs
        # ramp the IBP radius over the IBP epochs
        eps = IBP_EPS * min(1.0, (epoch - epochs + 1) / max(1, ibp_epochs // 2)) if ibp else 0.0
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            xb, yb = x_tr[idx], y_tr[idx]
            xn = (xb + (torch.rand_like(xb) * 2 - 1) * NOISE).clamp(0, 1)
            loss = ce(model(xn), yb)
            if ibp:
                loss = (1 - IBP_WEIGHT) * loss + IBP_WEIGHT * ce(ibp_logits(model, xb, eps, yb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return float((model(x).argmax(1) == y).float().mean())


@torch.no_grad()
def ibp_verified(model, x, y, eps) -> float:
    """Fraction of x whose IBP worst-case logits still pick y (float, indicative only)."""
    return float((ibp_logits(model, x, eps, y).argmax(1) == y).float().mean())


def f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _rename(g: GraphBuilder, names: dict[str, str]) -> None:
    """Give the builder's auto-named nodes (relu, pool, flatten) readable ids."""
    for node in g.nodes:
        node["id"] = names.get(node["id"], node["id"])
        node["inputs"] = [names.get(i, i) for i in node["inputs"]]
    g.outputs = [names.get(o, o) for o in g.outputs]


def export_mlp(model: nn.Sequential, folder: str) -> str:
    fc1, _, fc2, _, fc3 = model
    g = GraphBuilder()
    x = g.input([64], name="x")
    h = g.relu(g.linear(x, f32(fc1.weight), f32(fc1.bias), name="fc1"))
    r1 = h.id
    h = g.relu(g.linear(h, f32(fc2.weight), f32(fc2.bias), name="fc2"))
    r2 = h.id
    out = g.linear(h, f32(fc3.weight), f32(fc3.bias), name="logits")
    g.output(out)
    _rename(g, {r1: "relu1", r2: "relu2"})
    return g.save(folder)


def export_cnn(model: nn.Sequential, folder: str) -> str:
    _, c1, _, _, c2, _, _, fc = model
    g = GraphBuilder()
    x = g.input([1, 8, 8], name="x")
    h = g.conv2d(x, f32(c1.weight), f32(c1.bias), padding=(1, 1), name="conv1")
    r1 = g.relu(h)
    p1 = g.avgpool2d(r1, (2, 2))
    h = g.conv2d(p1, f32(c2.weight), f32(c2.bias), padding=(1, 1), name="conv2")
    r2 = g.relu(h)
    fl = g.flatten(r2)
    out = g.linear(fl, f32(fc.weight), f32(fc.bias), name="logits")
    g.output(out)
    _rename(g, {r1.id: "relu1", p1.id: "pool1", r2.id: "relu2", fl.id: "flatten"})
    return g.save(folder)


def pixel_text(p: int) -> str:
    """pixel/16 as an exact decimal string: 0 -> "0", 9 -> "0.5625", 16 -> "1"."""
    return format((Decimal(int(p)) / Decimal(16)).normalize(), "f")


def kernel_check(path: str, model: nn.Sequential, images: list[list[str]]) -> float:
    """Exact kernel logits vs torch float32 on `images`; returns the largest difference."""
    graph = load_graph(path)
    shape = graph.the_input("train", "input").shape
    out_id = graph.outputs[0]
    worst = 0.0
    for img in images:
        vals = tuple(decode_rational(v, "image") for v in img)
        iv = evaluate(graph, point_interval(vals, shape))[out_id]
        assert iv.is_point
        exact = np.array([float(Fraction(int(n), int(iv.den))) for n in iv.lo])
        with torch.no_grad():
            ref = model(torch.tensor([[float(v) for v in img]], dtype=torch.float32))[0].numpy()
        diff = float(np.max(np.abs(exact - ref)))
        worst = max(worst, diff)
        if diff > 1e-4 or int(np.argmax(exact)) != int(np.argmax(ref)):
            raise SystemExit(f"{path}: kernel and torch disagree (max diff {diff:.3g}, argmax "
                             f"{int(np.argmax(exact))} vs {int(np.argmax(ref))})")
    return worst


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tl_dsl", "data", "digits"))
    args = ap.parse_args(argv)

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    xi_tr, xi_te, y_tr_np, y_te_np = load_data()
    x_tr = torch.tensor(xi_tr / 16.0, dtype=torch.float32)
    x_te = torch.tensor(xi_te / 16.0, dtype=torch.float32)
    y_tr, y_te = torch.tensor(y_tr_np), torch.tensor(y_te_np)
    images = [[pixel_text(p) for p in row] for row in xi_te[:N_SHIPPED]]

    os.makedirs(args.out, exist_ok=True)
    summary = {}
    specs = [("mlp", make_mlp, export_mlp, 30, 30), ("cnn", make_cnn, export_cnn, 30, 30)]
    for name, make, export, epochs, ibp_epochs in specs:
        torch.manual_seed(SEED)
        t0 = time.perf_counter()
        model = train(make(), x_tr, y_tr, epochs, ibp_epochs)
        seconds = time.perf_counter() - t0
        acc = accuracy(model, x_te, y_te)
        path = export(model, os.path.join(args.out, name))
        worst = kernel_check(path, model, images[:N_CHECKED])
        graph = load_graph(path)
        ibp = {str(e): round(ibp_verified(model, x_te, y_te, e), 4) for e in
               (0.005, 0.01, 0.02, 0.05)}
        summary[name] = {"test_accuracy": round(acc, 4), "test_size": len(y_te),
                         "parameters": graph.parameter_count(),
                         "training_seconds": round(seconds, 2), "epochs": epochs + ibp_epochs,
                         "ibp_verified_accuracy_float": ibp,
                         "kernel_vs_torch_max_abs_diff": float(f"{worst:.3g}")}
        print(f"{name}: test accuracy {acc:.4f} ({len(y_te)} images), "
              f"{graph.parameter_count()} parameters, trained in {seconds:.1f} s; "
              f"kernel vs torch on {N_CHECKED} images: max |diff| {worst:.2g}, same argmax; "
              f"IBP-verified (float, indicative) {ibp}")

    with open(os.path.join(args.out, "test_set.json"), "w") as f:
        f.write(_test_set_json(images, [int(v) for v in y_te_np[:N_SHIPPED]]))
    import sklearn

    meta = {"seed": SEED, "torch": torch.__version__, "scikit_learn": sklearn.__version__,
            "noise": NOISE, "ibp_eps": IBP_EPS, "models": summary}
    with open(os.path.join(args.out, "models.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}/{{mlp,cnn}}/graph.json + weights.safetensors, test_set.json "
          f"({N_SHIPPED} images), models.json")


def _test_set_json(images: list[list[str]], labels: list[int]) -> str:
    """One image per line, so the file stays small and diffable."""
    head = {"source": "sklearn.datasets.load_digits, pixels/16 (exact decimals), test split of "
                      "train_test_split(test_size=0.25, random_state=0, stratify=y): first "
                      f"{len(images)} images, flattened row-major (the CNN reads them as "
                      "[1, 8, 8])",
            "shape": [64]}
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    lines.append(' "images": [')
    lines += [f"  {json.dumps(img, separators=(',', ':'))}" + ("," if i < len(images) - 1 else "")
              for i, img in enumerate(images)]
    lines.append(" ],")
    lines.append(f' "labels": {json.dumps(labels, separators=(",", ":"))}')
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
