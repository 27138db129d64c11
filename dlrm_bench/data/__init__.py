"""Criteo Terabyte data: the MLPerf binary format, its reader, a synthetic generator, and the
raw-day preprocessor (``format``, ``reader``, ``synth``, ``preprocess``)."""
