"""`openfusion eval`: DRACO-style rubric evaluation of models served by a running openfusion."""
