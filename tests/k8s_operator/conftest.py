"""Fixtures of the operator tests; they live in operator_harness.py so tests can import its helpers."""

from operator_harness import cluster, fisher_slice, kmock_options, model_dir, prometheus, tls  # noqa: F401
