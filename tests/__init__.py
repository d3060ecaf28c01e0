"""The test suite. Its folders mirror the source tree (tests/engine/stages ↔ engine/stages, …);
reliability/, gpu/ and vllm/ are cross-cutting suites selected by their markers.

Every folder is a package, so a test module is named by its path (``tests.engine.lmm.test_hf``):
two folders may hold files of the same name, and shared code is imported by its full name
(``tests.helpers.fake_lmm``), never through sys.path.
"""
