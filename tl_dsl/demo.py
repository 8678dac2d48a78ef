"""`tl demo`: robustness of two small digit classifiers (an MLP and a CNN shipped as package
data, trained on scikit-learn's 8x8 digits), certified or refuted image by image and checked by
the kernel. For each model, radius and test image: attack, then interval replay, CROWN,
alpha-CROWN and branch and bound, each certificate checked exactly; tables per radius; bundles
written; the audit of one bundle at the end."""

import json
import os
import shutil
import sys
import time
from importlib import resources

import kernel_checker
from stdlib.tactics import prove_robust
from tl_dsl import proof
from tl_dsl.audit import audit_bundle, format_audit

RADII = ("1/200", "1/100", "1/50", "1/20")
MODELS = ("mlp", "cnn")


def _data_dir() -> str:
    return str(resources.files("tl_dsl") / "data" / "digits")


def _fmt_radius(r: str) -> str:
    num, den = r.split("/")
    return f"{int(num) / int(den):g}"


def run_demo(out_dir: str = "tl-out/demo", images: int = 100, radii=RADII, models=MODELS,
             bab_timeout_s: float = 2.0) -> int:
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.table import Table

    from oracles.bounds_torch import load_chain

    torch.set_num_threads(1)  # these models are tiny: thread start-up costs 100x the arithmetic
    console = Console(width=None if sys.stdout.isatty() else 130)
    t_start = time.perf_counter()
    with open(os.path.join(_data_dir(), "test_set.json")) as f:
        test = json.load(f)
    xs, labels = test["images"][:images], test["labels"][:images]
    rows, first_proof = [], None
    total = len(models) * len(radii) * len(xs)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("certifying", total=total)
        for model in models:
            mdir = os.path.join(out_dir, model)
            shutil.copytree(os.path.join(_data_dir(), model), mdir, dirs_exist_ok=True)
            graph_path = os.path.join(mdir, "graph.json")
            graph = kernel_checker.load_graph(graph_path)
            chain = load_chain(graph_path, graph.outputs[0])
            for radius in radii:  # (bundles of an earlier run with more images would linger)
                shutil.rmtree(os.path.join(mdir, f"eps{radius.replace('/', '_')}"),
                              ignore_errors=True)
                stats = {"certified": 0, "counterexample": 0, "unknown": 0, "ibp": 0,
                         "crown": 0, "producer_s": 0.0, "kernel_s": 0.0, "by": {}}
                for i, (x0, label) in enumerate(zip(xs, labels)):
                    bar.update(task, description=f"{model} eps={_fmt_radius(radius)} image {i}")
                    o = prove_robust(graph, graph_path, x0, radius, label, clamp=(0, 1),
                                     chain=chain, seed=i,
                                     bab_timeout_s=bab_timeout_s)
                    stats[o.status] += 1
                    stats["ibp"] += bool(o.proved_by.get("ibp"))
                    stats["crown"] += bool(o.proved_by.get("ibp") or o.proved_by.get("crown"))
                    stats["producer_s"] += o.producer_s
                    stats["kernel_s"] += o.kernel_s
                    if o.method:
                        stats["by"][o.method] = stats["by"].get(o.method, 0) + 1
                    if o.theorem is not None:
                        kind = "cex" if o.status == "counterexample" else "proof"
                        b = proof.write_bundle(
                            os.path.join(mdir, f"eps{radius.replace('/', '_')}",
                                         f"img{i:03d}.{kind}.bundle.json"),
                            o.claim, o.certificate, graph_path, graph,
                            {"tool": "tl demo", "method": o.method, "image": str(i)})
                        if first_proof is None and o.method in ("crown", "alpha", "bab"):
                            first_proof = b
                    bar.advance(task)
                rows.append((model, radius, stats))
    for model in models:
        table = Table(title=f"{model}: {len(xs)} test images, L-inf ball clamped to [0, 1]")
        for col in ("eps", "certified", "cex", "unknown", "IBP alone", "IBP or CROWN",
                    "decided by", "producer s", "kernel s", "kernel share"):
            table.add_column(col, justify="right")
        for m, radius, s in rows:
            if m != model:
                continue
            share = s["kernel_s"] / max(s["kernel_s"] + s["producer_s"], 1e-9)
            by = " ".join(f"{k}:{s['by'][k]}" for k in ("attack", "ibp", "crown", "alpha", "bab")
                          if k in s["by"])
            table.add_row(_fmt_radius(radius), str(s["certified"]), str(s["counterexample"]),
                          str(s["unknown"]), str(s["ibp"]), str(s["crown"]), by,
                          f"{s['producer_s']:.2f}", f"{s['kernel_s']:.2f}", f"{share:.0%}")
        console.print(table)
    summary = {"images": len(xs), "radii": list(radii),
               "rows": [{"model": m, "radius": r, **{k: v for k, v in s.items()}}
                        for m, r, s in rows],
               "seconds": time.perf_counter() - t_start}
    k_all = sum(s["kernel_s"] for _, _, s in rows)
    p_all = sum(s["producer_s"] for _, _, s in rows)
    summary["kernel_share"] = k_all / max(k_all + p_all, 1e-9)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    console.print(f"kernel checking {k_all:.1f} s, producers {p_all:.1f} s: kernel share "
                  f"{summary['kernel_share']:.0%} of certification time")
    console.print(f"bundles and summary.json written under {out_dir}/ "
                  f"({summary['seconds']:.1f} s in all)")
    if first_proof is None:
        console.print("no CROWN/alpha/branch-and-bound proof to audit")
        return 1
    console.print(f"\n$ tl audit {first_proof}")
    report = audit_bundle(first_proof)
    console.print(format_audit(report), highlight=False)
    ok, msg = proof.recheck_in_fresh_process(first_proof)
    console.print(f"\nre-checked in a fresh process: {msg}")
    return 0 if (ok and report["permitted"] and not report["assumptions"]) else 1
