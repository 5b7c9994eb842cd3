"""Observability: Prometheus metrics and structured JSON logs carrying the generation id."""
