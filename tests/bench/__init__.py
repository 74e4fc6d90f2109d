"""Benchmarks of dmp beside ``multiprocessing`` (fork): ``python -m tests.bench``.

These are measurements, not tests: nothing here asserts a timing. See
README.md in this directory for what each row measures.
"""
