"""Grading tools: comparisons with actionable messages, problem-set parts, self-check, instructor pipeline."""
