"""The Textual front end. The only package of mixchat that imports `textual` (see tests/test_layering.py)."""
