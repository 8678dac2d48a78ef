"""The kernel's own enclosures (kernel_checker/enclosure.py) against mpmath at 200 digits, the
Enclosure judgment (verified, assumed, refused), and the graph-op helpers (interval replay and
CROWN relaxations) checked on samples."""

import json
import random
import subprocess
import sys

import mpmath
import pytest
from flint import fmpq, fmpz_mat
from mpmath_reference import inside, mp, true_f, true_range

from kernel_checker import enclosure as enc
from kernel_checker.errors import KernelError
from kernel_checker.theorem import Level

FUNCS = enc.FUNCS


def rand_arg(rng: random.Random, func: str) -> fmpq:
    x = fmpq(rng.randint(-16000, 16000), rng.choice([1, 3, 7, 1000, 1024, 99991]))
    if func in ("log", "sqrt"):
        x = abs(x) + fmpq(1, rng.choice([7, 1000, 10**9]))
    return x


def battery(seed: int = 7, points: int = 20, intervals: int = 10):
    rng = random.Random(seed)
    for func in FUNCS:
        for _ in range(points):
            x = rand_arg(rng, func)
            yield func, x, x
        for _ in range(intervals):
            x = rand_arg(rng, func)
            yield func, x, x + fmpq(rng.randint(1, 5000), rng.choice([10, 1000, 10**6]))


CASES = list(battery())


def test_battery_is_large_enough():
    assert len(CASES) >= 200


def test_kernel_enclosures_contain_the_true_values_and_are_tight():
    for func, lo, hi in CASES:
        a, b = enc.enclose_unary(func, lo, hi, 128)
        t_lo, t_hi = true_range(func, lo, hi)
        assert inside(a, b, t_lo, t_hi), (func, lo, hi)
        assert a.q & (a.q - 1) == 0 and b.q & (b.q - 1) == 0, "dyadic endpoints"
        if lo == hi:  # 128 bits: absolute 2^-100 (relative for exp and sqrt, scale >= 1)
            assert mp(b - a) <= mpmath.mpf(2) ** -100 * max(1, abs(t_lo)), (func, lo)


@pytest.mark.parametrize("func", FUNCS)
def test_endpoints_near_critical_points_and_zero(func):
    """Around 0, 1 and k pi/2 (where sin/cos turn), and tiny arguments."""
    eps = fmpq(1, 10**12)
    pts = [fmpq(0), fmpq(1), eps, -eps, fmpq(355, 226), fmpq(-355, 113), fmpq(710, 113)]
    for x in pts:
        if func in ("log", "sqrt") and x <= 0:
            continue
        for lo, hi in ((x, x), (x - eps, x + eps) if func not in ("log", "sqrt") else (x, x)):
            a, b = enc.enclose_unary(func, lo, hi, 96)
            t_lo, t_hi = true_range(func, lo, hi)
            assert inside(a, b, t_lo, t_hi), (func, lo, hi)


def test_exact_values_are_points():
    for func, x, v in (("exp", 0, 1), ("cos", 0, 1), ("sin", 0, 0), ("tanh", 0, 0),
                       ("sigmoid", 0, fmpq(1, 2)), ("log", 1, 0), ("sqrt", fmpq(9, 4),
                                                                   fmpq(3, 2))):
        assert enc.enclose_unary(func, fmpq(x), fmpq(x), 64) == (fmpq(v), fmpq(v))
        assert enc.check_ball_encloses(func, fmpq(x), fmpq(x), fmpq(v), fmpq(v))


def test_sin_cos_wide_intervals_reach_the_extremes():
    assert enc.enclose_unary("sin", fmpq(0), fmpq(8), 64) == (-1, 1)
    lo, hi = enc.enclose_unary("cos", fmpq(-1), fmpq(1), 64)
    assert hi == 1 and mp(lo) <= mpmath.cos(1)
    lo, hi = enc.enclose_unary("sin", fmpq(1), fmpq(2), 64)
    assert hi == 1 and mp(lo) <= mpmath.sin(1) < mp(lo) + mpmath.mpf(10) ** -15


def test_saturation_of_tanh_and_sigmoid():
    for func, x in (("tanh", 500), ("tanh", -500), ("sigmoid", 900), ("sigmoid", -900)):
        a, b = enc.enclose_unary(func, fmpq(x), fmpq(x), 64)
        v = true_f(func, mpmath.mpf(x))
        assert mp(a) <= v <= mp(b) and b - a <= fmpq(1, 2**64)


def test_domain_errors_and_budgets_are_refused():
    with pytest.raises(KernelError, match="log is undefined"):
        enc.enclose_unary("log", fmpq(-1), fmpq(1), 64)
    with pytest.raises(KernelError, match="sqrt is undefined"):
        enc.enclose_unary("sqrt", fmpq(-1, 10**9), fmpq(1), 64)
    with pytest.raises(KernelError, match="budget"):
        enc.enclose_unary("exp", fmpq(10**6), fmpq(10**6), 64)
    with pytest.raises(KernelError, match="budget"):
        enc.enclose_unary("sin", fmpq(2**21), fmpq(2**21), 64)
    with pytest.raises(KernelError, match="expected one of"):
        enc.enclose_unary("gamma", fmpq(1), fmpq(1), 64)
    assert not enc.check_ball_encloses("exp", fmpq(10**6), fmpq(10**6), fmpq(0), fmpq(10**9))


# ----------------------------------------------------------------- check_ball_encloses


def test_balls_tight_to_one_unit_are_verified_and_one_unit_off_refuted():
    """Around each true value v, the decimal ball [floor(v 10^k) - 1, ceil(v 10^k) + 1] 10^-k
    is verified; a ball whose upper end is floor(v 10^k) (< v) or lower end ceil(v 10^k)
    (> v) misses v by less than one unit in the last digit and is refuted."""
    rng = random.Random(3)
    for func in FUNCS:
        for _ in range(6):
            x = rand_arg(rng, func)
            v = true_f(func, mp(x))
            if v == 0 or mpmath.isint(v) or abs(v) < mpmath.mpf(10) ** -1000:
                continue  # (tiny values need more than MAX_BITS absolute bits: undecided)
            k = 40 - int(mpmath.floor(mpmath.log10(abs(v))))
            lo_int = int(mpmath.floor(v * mpmath.mpf(10) ** k))
            s = fmpq(1, 10**k) if k >= 0 else fmpq(10**-k)
            assert enc.check_ball_encloses(func, x, x, (lo_int - 1) * s, (lo_int + 2) * s)
            assert enc._decide(lambda b, f=func, x=x: enc.enclose_unary(f, x, x, b),
                               (lo_int - 2) * s, lo_int * s) == "refuted"
            assert enc._decide(lambda b, f=func, x=x: enc.enclose_unary(f, x, x, b),
                               (lo_int + 1) * s, (lo_int + 3) * s) == "refuted"


def test_interval_balls():
    e1, e2 = enc.enclose_unary("exp", fmpq(1), fmpq(2), 200)
    assert enc.check_ball_encloses("exp", fmpq(1), fmpq(2), fmpq(2718, 1000), fmpq(7390, 1000))
    assert not enc.check_ball_encloses("exp", fmpq(1), fmpq(2), fmpq(2719, 1000), fmpq(8))
    assert mp(e1) <= mpmath.e and mpmath.e**2 <= mp(e2)


# ----------------------------------------------------------------- the Enclosure judgment


def claim_doc(expr, vars_, interval, **kw):
    return {"kind": "enclosure", "expr": expr, "vars": vars_, "interval": interval, **kw}


X = {"op": "var", "name": "x"}
EVIDENCE = {"tool": "python-flint", "version": "0.9.0", "prec_bits": "128",
            "request_sha256": "0" * 64}


def closed_form():
    """exp(x) * sin(x) + x^2 / (1 + sqrt(x)) - tanh(x) / 3 over x in [1/10, 1/2]."""
    return {"op": "sub", "args": [
        {"op": "add", "args": [
            {"op": "mul", "args": [{"op": "exp", "arg": X}, {"op": "sin", "arg": X}]},
            {"op": "div", "args": [{"op": "pow", "base": X, "exp": 2},
                                   {"op": "add", "args": [{"op": "const", "value": 1},
                                                          {"op": "sqrt", "arg": X}]}]}]},
        {"op": "mul", "args": [{"op": "const", "value": "1/3"}, {"op": "tanh", "arg": X}]}]}


def test_closed_form_is_proved_without_assumptions():
    doc = claim_doc(closed_form(), {"x": ["0.1", "1/2"]}, ["0.05", "1.3"], name="f")
    thm = enc.check_enclosure({"claim": doc, "certificate": {"rule": "enclosure"}})
    assert thm.level == Level.PROVED and not thm.assumptions and thm.rule == "enclosure"
    j = thm.claim.to_json()
    assert j["vars"] == {"x": ["1/10", "1/2"]} and j["interval"] == ["1/20", "13/10"]
    assert enc.parse_enclosure(j) == thm.claim
    assert thm.to_json()["level"] == "proved"


def test_false_claims_are_refused_even_with_oracle_evidence():
    doc = claim_doc(closed_form(), {"x": ["0.1", "1/2"]}, ["2", "3"])
    for cert in ({"rule": "enclosure"}, {"rule": "enclosure", "oracle": EVIDENCE}):
        with pytest.raises(KernelError, match="claim is false"):
            enc.check_enclosure({"claim": doc, "certificate": cert})


def test_undecided_claims_need_oracle_evidence_and_carry_it():
    atan = claim_doc({"op": "atan", "arg": X}, {"x": ["1", "1"]},
                     {"mid": "785398163397448309615660845819875721", "rad": "1", "exp": "-36"})
    with pytest.raises(KernelError, match="no oracle evidence"):
        enc.check_enclosure({"claim": atan, "certificate": {"rule": "enclosure"}})
    thm = enc.check_enclosure({"claim": atan, "certificate": {"rule": "enclosure",
                                                              "oracle": EVIDENCE}})
    (a,) = thm.assumptions
    assert a.name == "oracle.arb.enclosure" and thm.level == Level.REPLAY_CHECKED
    assert dict(a.provenance)["tool"] == "python-flint" and a.statement == thm.claim.spec_sha256()
    huge = claim_doc({"op": "exp", "arg": X}, {"x": ["100000", "100000"]},
                     {"mid": "28066633604", "rad": "1", "exp": "43419"})
    with pytest.raises(KernelError, match="exponent beyond the limit"):
        enc.check_enclosure({"claim": huge, "certificate": {"rule": "enclosure"}})
    tight = claim_doc({"op": "exp", "arg": X}, {"x": ["1", "1"]},
                      ["2.718281828459045235360287471352662497757247093699959574966",
                       "2.718281828459045235360287471352662497757247093699959574967"])
    enc.MAX_BITS, saved = 128, enc.MAX_BITS
    try:
        thm = enc.check_enclosure({"claim": tight, "certificate": {"rule": "enclosure",
                                                                   "oracle": EVIDENCE}})
    finally:
        enc.MAX_BITS = saved
    assert thm.level == Level.REPLAY_CHECKED  # beyond a 128-bit budget: assumed, with provenance
    assert enc.check_enclosure({"claim": tight, "certificate": {"rule": "enclosure"}}).level \
        == Level.PROVED


def test_a_ball_too_narrow_at_a_corner_is_refused_not_left_to_the_oracle():
    """exp on [1, 2] claimed below e^2 - 10^-30: bisection in 64 pieces cannot isolate x = 2
    (it was accepted at replay-checked on the oracle's word); at the box's corners and centre
    the expression is a number the kernel encloses tightly, so the claim is refuted. With two
    variables the corner (1, 2) of x * exp(y) refutes likewise; the true range is verified."""
    with mpmath.workprec(300):
        e2 = mpmath.exp(2)
        top = mpmath.nstr(e2 - mpmath.mpf(10) ** -30, 60, strip_zeros=False)
        top2 = mpmath.nstr(e2 + mpmath.mpf(10) ** -30, 60, strip_zeros=False)
    for cert in ({"rule": "enclosure"}, {"rule": "enclosure", "oracle": EVIDENCE}):
        with pytest.raises(KernelError, match="claim is false"):
            enc.check_enclosure({"claim": claim_doc({"op": "exp", "arg": X}, {"x": ["1", "2"]},
                                                    ["2", top]), "certificate": cert})
    two = {"op": "mul", "args": [X, {"op": "exp", "arg": {"op": "var", "name": "y"}}]}
    with pytest.raises(KernelError, match="claim is false"):
        enc.check_enclosure({"claim": claim_doc(two, {"x": ["0", "1"], "y": ["1", "2"]},
                                                ["0", top]),
                             "certificate": {"rule": "enclosure", "oracle": EVIDENCE}})
    thm = enc.check_enclosure({"claim": claim_doc(two, {"x": ["0", "1"], "y": ["1", "2"]},
                                                  ["0", top2]),
                               "certificate": {"rule": "enclosure", "oracle": EVIDENCE}})
    assert thm.level == Level.PROVED and not thm.assumptions


@pytest.mark.parametrize("bad, match", [
    ({"op": "log", "arg": X}, "log is undefined"),
    ({"op": "div", "args": [{"op": "const", "value": 1}, X]}, "may contain 0"),
    ({"op": "pow", "base": X, "exp": -1}, "may contain 0"),
    ({"op": "pow", "base": X, "exp": 1.5}, "integer"),
    ({"op": "var", "name": "y"}, "no box for variable"),
    ({"op": "gamma", "arg": X}, "expected an expression node"),
    ({"op": "sub", "args": [X, X, X]}, "two arguments"),
    ({"op": "const", "value": "nan"}, "finite"),
    ({"op": "exp", "arg": X, "extra": 1}, "expected an expression node"),
])
def test_ill_formed_or_undefined_expressions_are_refused(bad, match):
    doc = claim_doc(bad, {"x": ["-1", "1"]}, ["-100", "100"])
    with pytest.raises(KernelError, match=match):
        enc.check_enclosure({"claim": doc, "certificate": {"rule": "enclosure",
                                                           "oracle": EVIDENCE}})


def test_claim_and_certificate_shapes_are_checked():
    good = claim_doc(X, {"x": ["0", "1"]}, ["0", "1"])
    for doc, match in (
            ({"claim": good}, "claim, certificate"),
            ({"claim": dict(good, kind="bounds"), "certificate": {"rule": "enclosure"}},
             "kind: enclosure"),
            ({"claim": good, "certificate": {"rule": "ibp"}}, "rule: enclosure"),
            ({"claim": good, "certificate": {"rule": "enclosure", "oracle": {"tool": "x"}}},
             "provenance"),
            ({"claim": claim_doc(X, {"x": ["1", "0"]}, ["0", "1"]),
              "certificate": {"rule": "enclosure"}}, "lo <= hi"),
            ({"claim": claim_doc(X, {"x": ["0", "1"]}, {"mid": "1", "rad": "-1", "exp": "0"}),
              "certificate": {"rule": "enclosure"}}, "rad >= 0")):
        with pytest.raises(KernelError, match=match):
            enc.check_enclosure(doc)
    deep = X
    for _ in range(300):
        deep = {"op": "neg", "arg": deep}
    with pytest.raises(KernelError, match="budget"):
        enc.parse_enclosure(claim_doc(deep, {"x": ["0", "1"]}, ["0", "1"]))


def test_interval_ops_are_sound_on_samples():
    rng = random.Random(11)
    y = {"op": "var", "name": "y"}
    expr = {"op": "add", "args": [
        {"op": "abs", "arg": {"op": "sub", "args": [X, y]}},
        {"op": "pow", "base": {"op": "neg", "arg": X}, "exp": 3},
        {"op": "pow", "base": y, "exp": 2},
        {"op": "relu", "arg": {"op": "cos", "arg": {"op": "mul", "args": [X, y]}}},
        {"op": "div", "args": [X, {"op": "add", "args": [y, {"op": "const", "value": 3}]}]}]}
    claim = enc.parse_enclosure(claim_doc(expr, {"x": ["-1", "2"], "y": ["-3/2", "1"]},
                                          ["0", "0"]))
    boxes = {n: (a, b) for n, a, b in claim.boxes}
    lo, hi = enc.eval_expr(claim.expr, boxes, 64)
    for _ in range(300):
        xv, yv = mpmath.mpf(rng.uniform(-1, 2)), mpmath.mpf(rng.uniform(-1.5, 1))
        v = abs(xv - yv) + (-xv) ** 3 + yv**2 + max(mpmath.cos(xv * yv), 0) + xv / (yv + 3)
        assert mp(lo) <= v <= mp(hi)


# ----------------------------------------------------------------- oracle answers (the echo)


def test_check_oracle_checks_the_echo():
    req = {"kind": "unary", "func": "exp", "lo": "1", "hi": "1", "prec_bits": 128}
    ball = {"mid": "27182818284590452353602874713526624977572", "rad": "1", "exp": "-40"}
    resp = {"status": "ok", "kind": "unary", "func": "exp", "prec_bits": 128,
            "flint_version": "0.9.0", "request_sha256": enc.request_sha256(req), "ball": ball}
    assert enc.check_oracle(req, resp).level == Level.PROVED
    for key, value, match in (("func", "log", "response.func"),
                              ("prec_bits", 64, "response.prec_bits"),
                              ("request_sha256", "ab" * 32, "response.request_sha256"),
                              ("status", "error", "response.status"),
                              ("ball", {"mid": "nan", "rad": "0", "exp": "0"}, "decimal integer"),
                              ("ball", {"mid": "0", "rad": "0", "exp": "0"}, "claim is false")):
        with pytest.raises(KernelError, match=match):
            enc.check_oracle(req, dict(resp, **{key: value}))


def test_a_request_without_prec_bits_is_checked_with_the_oracles_default():
    """`prec_bits` may be left to the oracle (the documented default, 128): the answer echoes
    the precision it used, and `tl oracle arb --check` took that for a wrong echo (exit 2)."""
    from oracles.arb import run_request

    req = {"kind": "unary", "func": "exp", "lo": "1", "hi": "2"}
    resp = run_request(req)
    assert resp["prec_bits"] == 128 and enc.check_oracle(req, resp).level == Level.PROVED
    out = subprocess.run([sys.executable, "-m", "tl_dsl.cli", "oracle", "arb", "--check"],
                         input=json.dumps(req), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout)["kernel"]["level"] == "proved", out


# ----------------------------------------------------------------- graph ops


def test_unary_interval_for_replay():
    lo, hi, den = enc.unary_interval("tanh", [-3, 0, 5], [-1, 0, 7], 2, "node 't'")
    assert den == 2**64
    for a, b, x0, x1 in zip(lo, hi, (-3, 0, 5), (-1, 0, 7)):
        assert inside(fmpq(a, den), fmpq(b, den), mpmath.tanh(mpmath.mpf(x0) / 2),
                      mpmath.tanh(mpmath.mpf(x1) / 2))
    with pytest.raises(KernelError) as info:
        enc.unary_interval("log", [-1], [1], 1, "node 'l'")
    assert (info.value.rule, info.value.path) == ("semantics", "node 'l'")


@pytest.mark.parametrize("func", enc.GRAPH_FUNCS)
def test_relaxations_are_sound_and_dyadic(func):
    rng = random.Random(5)
    for _ in range(6):
        lo = fmpq(rng.randint(-4000, 4000), 1000)
        if func == "log":
            lo = abs(lo) + fmpq(1, 100)
        hi = lo + fmpq(rng.choice([0, 1, 500, 3000]), 1000)
        al, bl, au, bu = enc.relax(func, lo, hi)
        assert all((v * 2**enc.RELAX_BITS).q == 1 for v in (al, bl, au, bu))
        for k in range(41):
            x = mp(lo) + (mp(hi) - mp(lo)) * k / 40
            v = true_f(func, x)
            assert mp(al) * x + mp(bl) <= v <= mp(au) * x + mp(bu), (func, lo, hi, k)
    al, bl, au, bu = enc.relax("tanh", fmpq(-1), fmpq(1))
    assert mp(bu - bl) < mpmath.mpf("0.21")  # optimal parallel lines: 0.164


def test_backward_smooth_bounds_a_linear_form():
    rng = random.Random(9)
    z_lo, z_hi, den = [-3, 1, -10], [2, 4, -2], 4
    lam = fmpz_mat(2, 3, [3, -2, 5, -1, 4, -7])
    out, scale, extra = enc.backward_smooth("sigmoid", z_lo, z_hi, den, lam.entries(),
                                            fmpq(1, 5), 2)
    const = [fmpq(0) + int(extra[0]) * scale, fmpq(1) + int(extra[1]) * scale]
    lam2, den2 = fmpz_mat(2, 3, out), mp(1 / scale)
    for _ in range(200):
        z = [mpmath.mpf(rng.uniform(a / den, b / den)) for a, b in zip(z_lo, z_hi)]
        y = [true_f("sigmoid", v) for v in z]
        for r in range(2):
            lhs = sum(int(lam[r, j]) * y[j] for j in range(3)) / 5 + mp(fmpq(r))
            rhs = sum(int(lam2[r, j]) * z[j] for j in range(3)) / den2 + mp(const[r])
            assert lhs >= rhs
