"""The Arb oracle (oracles/arb.py) against mpmath at 200 digits, its JSON protocol (in-process,
`python -m oracles.arb_oracle_main` and `tl oracle arb`), and the kernel's check of its answers:
every ball contains the true value, point balls at 128 bits are narrower than 1e-30 relative,
and every answer the kernel verifies itself is checked against mpmath the same way."""

import argparse
import io
import json
import os
import random
import subprocess
import sys

import mpmath
import pytest
from flint import arb, fmpq
from mpmath_reference import inside, mp, true_f, true_range

from kernel_checker.enclosure import check_enclosure, check_oracle, request_sha256
from kernel_checker.errors import KernelError
from kernel_checker.exact import decode_ball
from kernel_checker.theorem import Level
from oracles import arb as oracle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_FUNCS = ("exp", "log", "sqrt", "tanh", "sigmoid", "sin", "cos")


def contains(ball: dict, t_lo, t_hi) -> bool:
    return inside(*decode_ball(ball, "ball"), t_lo, t_hi)


def text(q: fmpq) -> str:
    return str(q.p) if q.q == 1 else f"{q.p}/{q.q}"


def battery(seed: int = 1):
    rng = random.Random(seed)
    for func in oracle.UNARY:
        for i in range(24):
            x = fmpq(rng.randint(-9000, 9000), rng.choice([1, 7, 100, 1000, 4096, 999983]))
            if func in ("log", "sqrt"):
                x = abs(x) + fmpq(1, rng.choice([3, 1000, 10**8]))
            hi = x if i % 3 else x + fmpq(rng.randint(1, 3000), rng.choice([10, 1000, 10**5]))
            yield {"kind": "unary", "func": func, "lo": text(x), "hi": text(hi),
                   "prec_bits": 128}


REQUESTS = list(battery())


def test_battery_contains_tight_and_kernel_checks():
    assert len(REQUESTS) >= 200
    verified = 0
    for req in REQUESTS:
        resp = oracle.run_request(req)
        assert resp["status"] == "ok", (req, resp)
        assert (resp["func"], resp["prec_bits"]) == (req["func"], 128)
        lo, hi = fmpq(req["lo"]), fmpq(req["hi"])
        t_lo, t_hi = true_range(req["func"], lo, hi)
        assert contains(resp["ball"], t_lo, t_hi), req
        if lo == hi:
            b_lo, b_hi = decode_ball(resp["ball"], "ball")
            assert mp(b_hi - b_lo) < mpmath.mpf(10) ** -30 * abs(t_lo), req
        thm = check_oracle(req, resp)
        if not thm.assumptions:  # verified by the kernel itself: the same mpmath check
            verified += 1
            assert thm.level == Level.PROVED and contains(resp["ball"], t_lo, t_hi)
        else:
            assert req["func"] in ("atan", "erf") or mp(hi) > 1000 or mp(lo) < -1000, req
    assert verified >= 7 * 24 * 9 // 10


def test_issue_examples_by_subprocess():
    def run(req):
        return subprocess.run([sys.executable, "-m", "oracles.arb_oracle_main"],
                              input=json.dumps(req), capture_output=True, text=True, cwd=ROOT)

    ok = run({"kind": "unary", "func": "exp", "lo": "1", "hi": "2", "prec_bits": 128})
    assert ok.returncode == 0
    doc = json.loads(ok.stdout)
    assert doc["status"] == "ok" and contains(doc["ball"], mpmath.e, mpmath.e**2)
    bad = run({"kind": "unary", "func": "log", "lo": "-1", "hi": "1", "prec_bits": 128})
    assert bad.returncode != 0
    doc = json.loads(bad.stdout)
    assert doc["status"] == "error" and "ball" not in doc and "0 or below" in doc["reason"]
    junk = run("{not json")
    assert junk.returncode != 0 and json.loads(junk.stdout)["status"] == "error"


def test_through_the_subprocess_layer():
    from oracles.subprocess_layer import ToolError

    req = {"kind": "unary", "func": "sin", "lo": "1/3", "prec_bits": 200}
    doc = oracle.run_subprocess(req)
    assert doc["request_sha256"] == request_sha256(req)
    assert check_oracle(req, doc).level == Level.PROVED
    with pytest.raises(ToolError) as info:
        oracle.run_subprocess({"kind": "unary", "func": "sqrt", "lo": "-2", "prec_bits": 64})
    assert "sqrt is undefined" in info.value.stderr_tail


def tl_oracle(stdin: str, *argv: str, monkeypatch, capsys) -> tuple[int, dict]:
    from tl_dsl.cli_oracle import register

    parser = argparse.ArgumentParser(prog="tl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["oracle", "arb", *argv])
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = args.func(args)
    return code, json.loads(capsys.readouterr().out)


def test_tl_oracle_arb_command(monkeypatch, capsys):
    req = '{"kind":"unary","func":"exp","lo":"1","hi":"2","prec_bits":128}'
    code, doc = tl_oracle(req, "--check", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and doc["kernel"]["level"] == "proved" and doc["kernel"]["assumptions"] == []
    code, doc = tl_oracle(req.replace("exp", "erf"), "--check", monkeypatch=monkeypatch,
                          capsys=capsys)
    assert code == 0 and doc["kernel"]["assumptions"][0]["name"] == "oracle.arb.enclosure"
    code, doc = tl_oracle(req.replace('"1"', '"-1"').replace("exp", "log"),
                          monkeypatch=monkeypatch, capsys=capsys)
    assert code == 1 and doc["status"] == "error"


def test_exact_inputs_and_floats():
    r = oracle.run_request({"kind": "unary", "func": "exp", "lo": 0.1, "prec_bits": 64})
    assert r["status"] == "error" and "binary64" in r["reason"]
    # JSON text 0.1 arrives as exact decimal text, not as a float
    from kernel_checker.exact import load_json

    req = load_json('{"kind": "unary", "func": "exp", "lo": 0.1, "prec_bits": 128}', "t")
    r = oracle.run_request(req)
    assert contains(r["ball"], mpmath.exp(mpmath.mpf(1) / 10), mpmath.exp(mpmath.mpf(1) / 10))
    r = oracle.run_request({"kind": "unary", "func": "exp", "lo": 0.1, "prec_bits": 128},
                           allow_float=True)  # the binary64 value 0.1000000000000000055...
    v = mpmath.exp(mpmath.mpf(3602879701896397) / 2**55)
    assert contains(r["ball"], v, v) and not contains(r["ball"], mpmath.exp(mpmath.mpf("0.1")),
                                                      mpmath.exp(mpmath.mpf("0.1")))
    const = {"kind": "expr", "expr": {"op": "exp", "arg": {"op": "const", "value": 0.1}},
             "vars": {}, "prec_bits": 128}  # (a const read the float only without the flag)
    assert "binary64" in oracle.run_request(const)["reason"]
    assert contains(oracle.run_request(const, allow_float=True)["ball"], v, v)
    r = oracle.run_request({"kind": "unary", "func": "tanh", "lo": "f32:3dcccccd",
                            "prec_bits": 128})
    v = mpmath.tanh(mpmath.mpf(13421773) / 2**27)
    assert contains(r["ball"], v, v)


@pytest.mark.parametrize("req, reason", [
    ({"kind": "unary", "func": "log", "lo": "0", "hi": "1"}, "0 or below"),
    ({"kind": "unary", "func": "exp", "lo": "100000"}, "overflow"),
    ({"kind": "unary", "func": "gamma", "lo": "1"}, "unknown function"),
    ({"kind": "unary", "func": "exp", "lo": "2", "hi": "1"}, "empty interval"),
    ({"kind": "unary", "func": "exp", "lo": "nan"}, "finite"),
    ({"kind": "unary", "func": "exp", "lo": "1", "prec_bits": 2}, "prec_bits"),
    ({"kind": "unary", "func": "exp", "lo": "1", "digits": 0}, "digits"),
    ({"kind": "expr", "expr": {"op": "log", "arg": {"op": "sub", "args": [
        {"op": "var", "name": "x"}, {"op": "var", "name": "x"}]}},
      "vars": {"x": ["0", "1"]}}, "log is not finite"),
    ({"kind": "expr", "expr": {"op": "div", "args": [{"op": "const", "value": "1"},
                                                     {"op": "var", "name": "x"}]},
      "vars": {"x": ["-1", "1"]}}, "contains 0"),
    ({"kind": "matrix"}, "kind"),
    # (a review: x**10**12 killed the interpreter with SIGFPE in FLINT; exp(-1e4000) raised
    # an OverflowError out of run_request, documented never to raise)
    ({"kind": "expr", "expr": {"op": "pow", "base": {"op": "var", "name": "x"},
                               "exp": 10**12}, "vars": {"x": ["2", "3"]}}, "|n| <= 1024"),
    ({"kind": "unary", "func": "exp", "lo": "-1e4000"}, "overflow"),
    ({"kind": "expr", "expr": {"op": "pow", "base": {"op": "var", "name": "x"}, "exp": 1024},
      "vars": {"x": ["1e10", "1e10"]}}, "overflow"),
])
def test_errors_are_documents_without_balls(req, reason):
    r = oracle.run_request(req)
    assert r["status"] == "error" and "ball" not in r and reason in r["reason"]


def test_nan_balls_are_caught():
    nan = arb("nan")
    assert nan.mid_rad_10exp() == (0, 0, 0)  # what python-flint would encode: zero
    with pytest.raises(oracle.OracleError, match="non-finite"):
        oracle.encode_ball(nan, 30)
    with pytest.raises(oracle.OracleError, match="non-finite"):
        oracle.apply_unary("log", arb(-1)) and oracle._finite(oracle.apply_unary("log", arb(-1)),
                                                              "log(-1)")


def test_must_reject_in_the_kernel():
    req = {"kind": "unary", "func": "exp", "lo": "1", "prec_bits": 128}
    resp = oracle.run_request(req)
    assert check_oracle(req, resp).level == Level.PROVED
    m, r, e = (int(resp["ball"][k]) for k in ("mid", "rad", "exp"))
    cases = [
        (dict(resp, ball={"mid": str(m), "rad": str(-r), "exp": str(e)}), "rad >= 0"),
        (dict(resp, func="log"), "response.func"),
        (dict(resp, ball={"mid": "NaN", "rad": "0", "exp": "0"}), "decimal integer"),
        (dict(resp, ball={"mid": "0", "rad": "0", "exp": "0"}), "claim is false"),  # NaN as 0
        (dict(resp, ball={"mid": str(m), "rad": str(r), "exp": "1000000"}), "exponent beyond"),
    ]
    # one unit in the last digit: a ball whose upper end is floor(e 10^40) 10^-40 < e
    k = int(mpmath.floor(mpmath.e * mpmath.mpf(10) ** 40))
    cases.append((dict(resp, ball={"mid": str(k - 1), "rad": "1", "exp": "-40"}),
                  "claim is false"))
    cases.append((dict(resp, ball={"mid": str(k + 2), "rad": "1", "exp": "-40"}),
                  "claim is false"))
    for bad, match in cases:
        with pytest.raises(KernelError, match=match):
            check_oracle(req, bad)


def test_precision_and_digits_are_parameters():
    for prec, digits in ((64, None), (256, None), (128, 12), (1024, 300)):
        req = {"kind": "unary", "func": "cos", "lo": "7/5", "prec_bits": prec}
        if digits:
            req["digits"] = digits
        r = oracle.run_request(req)
        assert r["prec_bits"] == prec and r["digits"] == (digits or oracle.default_digits(prec))
        assert len(r["ball"]["mid"]) <= r["digits"] + 1
        assert contains(r["ball"], mpmath.cos(mpmath.mpf(7) / 5), mpmath.cos(mpmath.mpf(7) / 5))
        assert check_oracle(req, r).level == Level.PROVED


def test_expr_requests():
    x = {"op": "var", "name": "x"}
    y = {"op": "var", "name": "y"}
    expr = {"op": "add", "args": [{"op": "mul", "args": [{"op": "exp", "arg": x},
                                                         {"op": "sin", "arg": y}]},
                                  {"op": "pow", "base": {"op": "sub", "args": [x, y]}, "exp": 2},
                                  {"op": "abs", "arg": {"op": "atan", "arg": x}}]}
    req = {"kind": "expr", "expr": expr, "vars": {"x": ["1/3", "1/3"], "y": ["2", "2"]},
           "prec_bits": 128}
    r = oracle.run_request(req)
    v = (mpmath.exp(mpmath.mpf(1) / 3) * mpmath.sin(2) + (mpmath.mpf(1) / 3 - 2) ** 2
         + mpmath.atan(mpmath.mpf(1) / 3))
    assert contains(r["ball"], v, v)
    thm = check_oracle(req, r)  # atan is oracle-only: assumed, with provenance
    assert [a.name for a in thm.assumptions] == ["oracle.arb.enclosure"]
    req["expr"] = expr["args"][0]
    req["vars"] = {"x": ["0", "1"], "y": ["1", "2"]}
    r = oracle.run_request(req)
    assert check_oracle(req, r).level == Level.PROVED


def test_mlp_requests_and_their_kernel_check():
    rng = random.Random(2)
    layers = [{"weight": [[str(fmpq(rng.randint(-99, 99), 50)) for _ in range(2)]
                          for _ in range(6)], "bias": ["0.1"] * 6, "activation": "tanh"},
              {"weight": [[str(fmpq(rng.randint(-99, 99), 50)) for _ in range(6)]
                          for _ in range(4)], "bias": ["0"] * 4, "activation": "relu"},
              {"weight": [[str(fmpq(rng.randint(-99, 99), 50)) for _ in range(4)]],
               "bias": ["-0.5"], "activation": "sigmoid"}]
    req = {"kind": "mlp", "layers": layers, "input": {"lo": ["-1/2", "0"], "hi": ["1/2", "1"]},
           "prec_bits": 96}
    r = oracle.run_request(req)
    assert r["status"] == "ok" and len(r["balls"]) == 1
    ev = {"tool": "python-flint", "version": r["flint_version"], "prec_bits": "96",
          "request_sha256": request_sha256(req)}
    (claim,) = oracle.mlp_to_enclosures(req, r)
    thm = check_enclosure({"claim": claim, "certificate": {"rule": "enclosure", "oracle": ev}})
    assert thm.level == Level.PROVED
    lo, hi = decode_ball(r["balls"][0], "b")
    sample_rng = random.Random(4)
    for _ in range(50):
        x = [mpmath.mpf(sample_rng.uniform(-0.5, 0.5)), mpmath.mpf(sample_rng.uniform(0, 1))]
        for layer in layers:
            z = [sum(mp(fmpq(c)) * v for c, v in zip(row, x)) + mpmath.mpf(b)
                 for row, b in zip(layer["weight"], layer["bias"])]
            act = layer["activation"]
            x = [max(v, 0) if act == "relu" else true_f(act, v) for v in z]
        assert mp(lo) <= x[0] <= mp(hi)


def test_a_request_with_a_key_it_does_not_read_is_an_error_document():
    """"prec_bitz" fell back to 128 bits silently (a review)."""
    from oracles.arb import run_request

    out = run_request({"kind": "unary", "func": "exp", "lo": "1", "prec_bitz": 256})
    assert out["status"] == "error" and "unexpected keys ['prec_bitz']" in out["reason"]
    assert run_request({"kind": "unary", "func": "exp", "lo": "1", "prec_bits": 256})[
        "status"] == "ok"
