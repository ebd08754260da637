"""The lobbyd benchmark suite; see ``bench/run.py`` and BENCHMARKS.md."""
