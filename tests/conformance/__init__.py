"""Conformance tests: one body, run against multiprocessing and dmp."""
