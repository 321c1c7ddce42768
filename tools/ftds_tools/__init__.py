"""ftds's development tools: benchmarks, the chaos suite, the demos and the lab's controller side.

A distribution of its own (ftds-tools, ``pip install -e tools`` in the repository), so that the
wheel every host installs carries only what runs there: an edit to a benchmark must not change
the hosts' package and roll-restart the replicas. The ``ftds bench``, ``ftds chaos`` and
``ftds local demo`` commands import it on demand."""
