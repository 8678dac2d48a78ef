"""tl-verify's trusted kernel: exact numbers, graph IR semantics, claims, certificate rules,
theorems and bundles. Imports only the standard library and python-flint; no floating point."""

from kernel_checker.bundle import KERNEL_VERSION, check_bundle, trusted_base
from kernel_checker.claims import Box, Claim, LinfBall, Polytope, parse_claim
from kernel_checker.errors import KernelError
from kernel_checker.graph import Graph, load_graph, parse_graph
from kernel_checker.rules import RULES, Context, derive
from kernel_checker.theorem import ASSUMPTIONS, Assumption, Level, Theorem

__all__ = ["ASSUMPTIONS", "KERNEL_VERSION", "RULES", "Assumption", "Box", "Claim", "Context",
           "Graph", "KernelError", "Level", "LinfBall", "Polytope", "Theorem", "check_bundle",
           "derive", "load_graph", "parse_claim", "parse_graph", "trusted_base"]
