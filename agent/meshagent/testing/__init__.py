"""Test topology and traffic tools shared by tests, benchmarks and the demo."""
