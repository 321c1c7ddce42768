"""Benchmarks: ftds against PySyncObj on loopback, and recovery timings."""
