"""The fusion pipeline: panel fan-out, judge analysis, synthesis. No HTTP framework and no httpx in here."""
