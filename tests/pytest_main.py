"""Bazel `main` for every py_test: runs pytest on the test files given as args."""

import sys

import pytest

if __name__ == "__main__":
  sys.exit(pytest.main(sys.argv[1:]))
