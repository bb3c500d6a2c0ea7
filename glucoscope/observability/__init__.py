"""Observability: request ids and structured logs, Prometheus metrics, readiness checks.

Business code calls in with one line (a decorator or a `record_*` call); everything about
how the figures are kept, aggregated across processes and exposed lives here.
"""
