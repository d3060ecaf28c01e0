"""Ranking: semantic (CLIP) and knowledge-graph similarity, combined into one total in [0, 1]."""
