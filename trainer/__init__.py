"""The ETA model family, its layers, input, metrics, export and trainer."""
