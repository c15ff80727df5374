"""The test suite as a regular package.

`from tests.x import ...` must find this directory: IPython appends its
extensions directory, which holds a regular package named `tests`, to
sys.path, and a regular package wins over a namespace one.
"""
