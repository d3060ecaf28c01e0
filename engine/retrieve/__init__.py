"""Retrieval, a candidate source: real items of the missing modality found in an index.

- ``index``: a faiss index of unit embeddings (flat or IVF-PQ, CPU or GPU);
- ``corpus``: the corpus of a dataset's complete samples (``kbridge index build``) and the
  ``Retriever`` the retrieve stage searches;
- ``mire/``: MIRe, late-interaction retrieval for text-missing samples.
"""
