"""The id hashing rule of the feature layout contract, in plain Python ints:
the reference the TF transform and the Transform preprocessing_fn are
checked against (tests/test_transforms.py, tests/test_preprocessing_fn.py)."""

MASK_64 = (1 << 64) - 1


def reference_slot(raw_id, buckets):
  """One id at a time, through the documented formula: splitmix64 of the id,
  its top 31 bits scaled onto slots 1 .. buckets - 1 (0 is padding)."""
  z = (int(raw_id) + 0x9E3779B97F4A7C15) & MASK_64
  z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK_64
  z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK_64
  z ^= z >> 31
  return 1 + ((z >> 33) * (buckets - 1) >> 31)
