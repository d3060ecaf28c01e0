"""Native ops (C++ / CUDA via nanobind), built by the root CMakeLists.txt."""
