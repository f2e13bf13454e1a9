"""Normalization layers, hands-on: reference implementation and grading tools."""
