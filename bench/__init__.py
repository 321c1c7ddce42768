"""Development benchmarks for ftds, run from a checkout (``scripts/bench compare``).

Kept outside the ``ftds`` package on purpose: nothing here is installed on cluster hosts, and
editing a benchmark changes nothing that a deploy ships.
"""
