"""openfusion: an OpenAI-compatible proxy that fuses a panel of models into one answer."""

__version__ = "0.1.0"
