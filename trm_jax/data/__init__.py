"""Datasets: reading, augmenting and encoding puzzles, and their evaluators."""
