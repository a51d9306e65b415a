"""Benchmarks: speed, memory and quality measurements that compare alternatives side by side.

Run one from the repository root as ``python -m benchmarks.NAME [options]`` (``--help`` lists them);
``--results-file PATH`` appends its rows to a CSV (or JSON lines), and ``python -m benchmarks.compare OLD NEW``
sets two such files side by side. What they share is in :mod:`benchmarks.harness`.
"""
