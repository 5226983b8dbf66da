"""Helpers shared by the test suite (real brokers, data files)."""
