"""`manage.py loadtest`: the whole stack under a bounded load on loopback (docs/benchmarks.md, "Load test")."""
