"""The fleet operator's side: operator keys, manifest building and publishing, artifact serving.

It builds on the wire protocol alone and never imports device code (tests/unit/test_architecture.py).
"""
