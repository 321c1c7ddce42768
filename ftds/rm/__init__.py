"""The Replication Manager: views, leases, relaunches and incidents."""
