"""Keras layers of the ETA model family (one layer per module)."""
