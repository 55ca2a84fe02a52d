"""Issue 14: several nodes on one CA database, PostgreSQL replication and failover (real servers)."""
