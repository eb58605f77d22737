"""Test scaffolding, not part of the installed package: the throwaway SSH
servers (:mod:`testing.testserver`), the loopback TCP proxy
(:mod:`testing.testproxy`) and the demo (``python -m testing.demo``), shared
by the tests, the demo and the benchmarks. Run from the repository root."""
