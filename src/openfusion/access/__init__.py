"""Access control: client keys, their scopes, per-key limits and request guards (no FastAPI here)."""
