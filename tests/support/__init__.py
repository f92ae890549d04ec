"""Shared test support, imported by the test modules as `support.*` (tests/ is on sys.path):
rasters and scenes written on the fly, hand-made oracles whose right answers are known, tiny
models of the real architectures, and readers of the engine's outputs."""
