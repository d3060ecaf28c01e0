"""MIRe: retrieved completion by late interaction (REFERENCE.md §5).

- ``model``: the query / document encoders (ColBERT text tokens + CLIP visual tokens pooled by
  text-guided attention, no feedback from text into vision);
- ``checkpoint``: our model directory, the tiny twin, the full-size configs, and the published
  ``{"model": state_dict, ...}`` checkpoint;
- ``index``: the late-interaction index (IVF centroids → candidate documents → exact MaxSim);
- ``retriever``: the engine's candidate source for text-missing samples.
"""
