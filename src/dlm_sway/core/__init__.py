"""Torch-free foundations: protocols, results, statistics, divergences, errors."""
