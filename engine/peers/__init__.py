"""Peer systems: downstream models with their own CLI that never enter the stage graph.

- ``classify/``: DCP and REP, missing-modality classifiers (``kbridge classify``);
- ``recover/``: DiCMoR, missing-modality recovery for sentiment analysis (``kbridge recover``).

MIRe, the third peer, is a candidate source of the engine and lives in engine/retrieve/mire/.
"""
