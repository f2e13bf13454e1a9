"""A package, so that test modules here may share a basename with one in a sibling folder
(tests/lab/test_normalization_free.py and tests/reference/test_normalization_free.py) under pytest's
default import mode."""
