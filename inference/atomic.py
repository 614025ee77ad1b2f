"""Atomic file writes for the inference tools: the implementation is the project-wide file_io.py
(mode and symlink target kept, temp file removed on failure); these names stay for existing
callers (inference/export.py, inference/evaluate.py)."""
from file_io import write_bytes_atomic, write_json_atomic, write_with_atomic  # noqa: F401
