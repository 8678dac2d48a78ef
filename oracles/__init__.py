"""Adapters around untrusted external tools (Julia, Python bridges, Arb, ...). Their output is
evidence for the kernel to check, never trusted on its own."""
