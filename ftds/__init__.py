"""ftds: a fault-tolerant replicated key-value service (active and passive replication)."""

__version__ = "0.1.0"
