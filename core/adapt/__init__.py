"""Adapting a CLIP segmenter to the user's labelled polygons (calibration, prompt tuning,
soft-guided fine-tuning) and the portable adapter file."""
