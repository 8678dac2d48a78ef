"""Where could an ACAS Xu tree's intermediate claims cost the kernel less? Measurements for
issue 5 (the kernel's share of the time); nothing here is used by `tl verify`.

    python benchmarks/vnncomp2021/claim_probes.py 4_6:1 1_1:3 [--out FILE.json]

For each instance (network:property) it grows the input-split tree as `tl verify` does without
`--jobs` (`prove_input_split`, float64), then, in float arithmetic (the producer's, so these are
estimates of what the kernel would accept, not proofs):
- inherit: of the leaves that claim intermediate bounds, how many their parent's CROWN linear
  bounds on the intermediate neurons, valid on the parent's box and so on the leaf's,
  concretised on the leaf's box, prove with no claims of their own;
- layers: of the leaves claiming with CROWN's default slopes, the cheapest subset of layers
  whose CROWN bounds still prove them (claimed neurons weighted by depth, as a row's cost in
  the kernel grows with the relus it passes), and how many the CROWN bounds that change a
  neuron's stability alone prove;
- cut: of the claimed sides, how many the bound with every earlier relu's unstable outputs cut
  loose (each in [0, u], no back-substitution through them) also proves: an inactive neuron's
  upper bound <= 0, an active neuron's lower bound >= 0 (the values the claims need downstream).
Prints a table and writes the figures (with the machine) to --out.
"""

import argparse
import itertools
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from benchmarks._common import BASIC_FIELDS, machine_info, utc_now, write_result  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "benchmarks", "vnncomp2021", "acasxu")
OK = 1e-6  # a margin counts as proving above this


def _leaves(cert: dict, lo: list, hi: list, parent=None) -> list:
    """(box lo, box hi, leaf certificate, parent box or None) of every leaf of a split tree."""
    from kernel_checker.exact import decode_rational

    if cert.get("rule") != "split":
        return [(lo, hi, cert, parent)]
    out, s = [], cert["split"]
    for (a, b), child in zip(s["pieces"], cert["children"], strict=True):
        lo2, hi2 = list(lo), list(hi)
        lo2[s["dim"]], hi2[s["dim"]] = decode_rational(a, "a"), decode_rational(b, "b")
        out += _leaves(child, lo2, hi2, (lo, hi))
    return out


def _boxes(pairs: list):
    import numpy as np
    import torch

    from oracles.bab import _outward_floats

    f = [_outward_floats(a, b) for a, b in pairs]
    return (torch.tensor(np.stack([x[0] for x in f])), torch.tensor(np.stack([x[1] for x in f])))


def _linear(bc, r, lo, hi) -> dict:
    """pos -> (A [B, 2n, n_in], const [B, 2n]): CROWN's linear lower bounds of rows e_j, -e_j
    of each intermediate node over boxes [lo, hi], from the relaxations in r."""
    import torch

    out = {}
    for pos, _, _, _ in r.inter:
        w, b = bc.steps[pos - 1][1], bc.steps[pos - 1][2]
        low, a, _ = bc.backward(torch.cat([w, -w]), pos - 2, r.relax, lo, hi, torch.cat([b, -b]))
        mid, rad = ((lo + hi) / 2)[:, :, None], ((hi - lo) / 2)[:, :, None]
        out[pos] = (a, low - torch.bmm(a, mid)[:, :, 0] + torch.bmm(a.abs(), rad)[:, :, 0])
    return out


def probe(net: str, prop: str) -> dict:
    import torch

    import kernel_checker
    from oracles.bab import prove_input_split, spec_margins
    from oracles.bounds_torch import BatchChain, _Relax, claim_box, spec_of
    from stdlib.vnnlib import read_vnnlib
    from tl_dsl.verify import _chain, load_model, region_claim

    torch.set_num_threads(1)
    gp = load_model(os.path.join(SHARED, f"ACASXU_run2a_{net}_batch_2000.onnx"),
                    tempfile.mkdtemp())
    graph = kernel_checker.load_graph(gp)
    claim = region_claim(graph, read_vnnlib(os.path.join(SHARED, f"prop_{prop}.vnnlib"))
                         .regions[0])
    chain = _chain(gp, claim)[0]
    t0 = time.perf_counter()
    res = prove_input_split(gp, claim, 300, chain=chain)
    out = {"instance": f"{net}:{prop}", "status": res.status, "producer_s":
           round(time.perf_counter() - t0, 1), "leaves": res.stats["leaves"]}
    if res.status != "proved":
        return out
    bc, spec = BatchChain(chain), spec_of(claim, chain.n_out)
    c = chain.tensor(spec.c)
    leaves = [x for x in _leaves(res.certificate, *map(list, claim_box(claim)))
              if x[2].get("intermediate") and x[3] is not None]  # (a lone leaf: no parent)
    if not leaves:
        return out
    lo, hi = _boxes([(a, b) for a, b, _, _ in leaves])
    plo, phi = _boxes([p for _, _, _, p in leaves])

    # inherit: the parents' linear bounds concretised on the leaves' boxes, as fixed bounds
    lin = _linear(bc, bc.bounds(plo, phi, c), plo, phi)
    mid, rad = ((lo + hi) / 2)[:, :, None], ((hi - lo) / 2)[:, :, None]
    fixed = {}
    for pos, (a, const) in lin.items():
        v = torch.bmm(a, mid)[:, :, 0] - torch.bmm(a.abs(), rad)[:, :, 0] + const
        n = v.shape[1] // 2
        fixed[pos] = (v[:, :n], -v[:, n:])
    inh = spec_margins(spec, bc.bounds(lo, hi, c, fixed=fixed, crown_inter=False).lower) > OK
    out["inherit"] = {"leaves_claiming": len(leaves), "proved_by_parent_bounds": int(inh.sum())}

    # layers: cheapest subset of layers' CROWN bounds, on the default-slope leaves
    plain = torch.tensor([not x[2].get("alpha") for x in leaves])
    full = bc.bounds(lo[plain], hi[plain], c)
    positions = [p for p, _, _, _ in full.inter]

    def cost(r):
        return sum((2 * use.sum(dim=1) * (d + 1) for d, (_, use, _, _) in enumerate(r.inter)),
                   torch.zeros(len(r.lower), dtype=torch.long))

    best = base = cost(full)
    for k in range(len(positions)):
        for sub in itertools.combinations(positions, k):
            r = bc.bounds(lo[plain], hi[plain], c, select=lambda pos, *a, sub=sub:
                          torch.full_like(a[0], pos in sub, dtype=torch.bool))
            ok = spec_margins(spec, r.lower) > OK
            best = torch.where(ok & (cost(r) < best), cost(r), best)
    stab = bc.bounds(lo[plain], hi[plain], c, select=lambda pos, clo, chi, llo, lhi:
                     (llo >= 0) | (lhi <= 0))  # only the bounds that change stability
    out["layers"] = {"leaves": int(plain.sum()), "depth_weighted_claims": int(base.sum()),
                     "best_subsets": int(best.sum()), "stability_only_proves":
                     int((spec_margins(spec, stab.lower) > OK).sum())}

    # cut: claimed sides the bound with unstable outputs cut loose proves
    r = bc.bounds(lo, hi, c)
    cut = {}
    for k, x in r.relax.items():
        z, uns = torch.zeros_like(x.lo), x.unstable > 0
        cut[k] = _Relax(x.lo, x.hi, x.active, x.unstable, torch.where(uns, z, x.up_slope),
                        torch.where(uns, x.hi, x.up_int), torch.where(uns, z, x.default_alpha))
    counts = dict.fromkeys(("inactive", "inactive_cut", "active_lo", "active_lo_cut",
                            "other_sides"), 0)
    for pos, _, _, _ in r.inter:
        w, b = bc.steps[pos - 1][1], bc.steps[pos - 1][2]
        low = bc.backward(torch.cat([w, -w]), pos - 2, cut, lo, hi, torch.cat([b, -b]))[0]
        n = w.shape[0]
        for i, (_, _, cert, _) in enumerate(leaves):
            for e in cert["intermediate"]:
                if e["node"] != chain.ids[pos]:
                    continue
                for j, elo, ehi in zip(e["indices"], e["lo"], e["hi"], strict=True):
                    if elo is None and ehi is not None and ehi <= 0:
                        counts["inactive"] += 1
                        counts["inactive_cut"] += int(-float(low[i, n + j]) <= 0)
                    elif elo is not None and elo >= 0:
                        counts["active_lo"] += 1
                        counts["active_lo_cut"] += int(float(low[i, j]) >= 0)
                        counts["other_sides"] += ehi is not None
                    else:
                        counts["other_sides"] += (elo is not None) + (ehi is not None)
    out["cut"] = counts
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("instances", nargs="+", help="network:property, e.g. 4_6:1")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                  "vnncomp2021_claim_probes.json"))
    args = ap.parse_args()
    rows = []
    print(f"{'instance':9} {'leaves':>6} {'claiming':>8} {'inherit':>7} {'layers':>15} "
          f"{'stability':>9} {'inactive cut':>14} {'active lo cut':>14} {'other':>6}")
    for inst in args.instances:
        net, prop = inst.split(":")
        row = probe(net, prop)
        rows.append(row)
        if "layers" not in row:  # not proved, or no leaf below a split claims anything
            print(f"{inst:9} {row['status']}" + (f", {row['leaves']} leaves, none claiming "
                                                  "below a split" if row["status"] == "proved"
                                                  else ""))
            continue
        ly, ct = row["layers"], row["cut"]
        print(f"{inst:9} {row['leaves']:6} {row['inherit']['leaves_claiming']:8} "
              f"{row['inherit']['proved_by_parent_bounds']:7} "
              f"{ly['best_subsets']:>7}/{ly['depth_weighted_claims']:<7} "
              f"{ly['stability_only_proves']:>4}/{ly['leaves']:<4} "
              f"{ct['inactive_cut']:>6}/{ct['inactive']:<7} "
              f"{ct['active_lo_cut']:>6}/{ct['active_lo']:<7} {ct['other_sides']:6}")
    import flint
    import torch

    write_result(args.out, {"machine": machine_info(BASIC_FIELDS, torch=torch.__version__,
                                                    flint=flint.__version__),
                            "date": utc_now(), "command": " ".join(["python"] + sys.argv),
                            "rows": rows})


if __name__ == "__main__":
    main()
