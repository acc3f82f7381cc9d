"""Numba kernels: pure functions over arrays, each with a plain-Python twin in reference.py."""
