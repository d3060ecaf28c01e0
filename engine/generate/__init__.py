"""Candidate generation: LMM-written prompts and captions (text.py), SDXL images (sdxl.py)."""
