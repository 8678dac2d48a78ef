"""An enclosure of a closed-form expression, checked by the kernel with no assumptions:
`python examples/enclosures/closed_form.py [--out DIR]`.

    f(x) = exp(-x^2) cos(3x) + log(1 + x) / sqrt(1 + x^2),   x in [0, 1]

1. The Arb oracle encloses f over the box (a decimal ball); the kernel re-derives an enclosure
   itself (rational series with explicit remainders) and proves the ball: level `proved`.
2. A round claim written by hand, f([0, 1]) in [0, 6/5], is proved by the kernel alone (it
   bisects the box where plain interval arithmetic is too loose).
3. A false claim, f([0, 1]) in [1/5, 6/5] (f(1) ~ 0.126), is refused.
4. A claim with erf, which the kernel only bounds coarsely, rests on `oracle.arb.enclosure`
   with its provenance (python-flint version, precision, request hash).
Claims print as LaTeX; the claim documents are written to DIR (default tl-out/enclosures).
"""

import argparse
import json
import os

import sympy

from kernel_checker.enclosure import check_enclosure
from kernel_checker.errors import KernelError
from tl_dsl.sympy_bridge import enclose, enclosure_claim, enclosure_latex


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tl-out/enclosures")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    x = sympy.Symbol("x")
    f = sympy.exp(-x**2) * sympy.cos(3 * x) + sympy.log(1 + x) / sympy.sqrt(1 + x**2)
    box = {x: ("0", "1")}

    thm = enclose(f, box, prec_bits=128, name="f_arb")
    print(f"1. Arb ball, checked by the kernel: level {thm.level.label}, "
          f"{len(thm.assumptions)} assumption(s)")
    print("   " + enclosure_latex(thm.claim))
    assert thm.level.label == "proved"

    claim = enclosure_claim(f, box, ("0", "6/5"), name="f_round")
    thm2 = check_enclosure({"claim": claim, "certificate": {"rule": "enclosure"}})
    print(f"2. hand-written claim: level {thm2.level.label}")
    print("   " + enclosure_latex(thm2.claim))
    with open(os.path.join(args.out, "closed_form_claim.json"), "w") as fh:
        json.dump({"claim": claim, "certificate": {"rule": "enclosure"}}, fh, indent=1)

    false = enclosure_claim(f, box, ("1/5", "6/5"), name="f_false")
    try:
        check_enclosure({"claim": false, "certificate": {"rule": "enclosure"}})
        print("3. the false claim was accepted (a bug)")
        return 1
    except KernelError as err:
        print(f"3. false claim refused: {err.path}: {err.message}")

    g = sympy.erf(x) * sympy.exp(x)
    thm4 = enclose(g, box, name="g")
    (a,) = thm4.assumptions
    print(f"4. erf(x) exp(x): level {thm4.level.label}, assumes {a.name} "
          f"{json.dumps(dict(a.provenance))}")
    print("   " + enclosure_latex(thm4.claim))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
