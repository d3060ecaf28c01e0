"""The general domain (COCO-like images and captions): SDXL renders, CLIP (and BLIP) score, the
LMM extracts objects, attributes and triples."""
