"""Feature-space recovery of missing modalities (DiCMoR, ICCV 2023): ``kbridge recover``.

flows.py (affine-coupling flows), fusion.py (MulT encoders), model.py (the network), convert.py
(published checkpoint ↔ our directory), text.py (BERT), tiny.py (the twin), data.py (MMSA pickle,
missing patterns), metrics.py, evaluate.py.
"""
