"""The chest-X-ray domain (IU X-Ray-like studies): Cheff renders X-rays from reports, a
CLIP-layout medical model scores, the LMM writes structured radiology records with triples."""
