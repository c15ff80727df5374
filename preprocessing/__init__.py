"""Ground floor: feature registry, raw-log ingestion, synthetic data, Transform."""
