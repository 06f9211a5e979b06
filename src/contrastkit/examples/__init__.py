"""Runnable examples: ``python -m contrastkit.examples.<name>``."""
