"""pyrust's benchmark: the warm path against its floor, its peers and cold Python.

Run it from the repository root with ``.venv/bin/python -m bench`` (see
``docs/benchmarks.md``).  Only the standard library and psutil are required;
numpy, matplotlib and hyperfine enable optional sections.
"""
