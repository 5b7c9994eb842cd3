"""openfusion benchmark harness (see bench/README.md)."""
