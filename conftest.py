# Root conftest: its presence puts the repository root on sys.path, so tests can import the
# top-level stage folders (export/, plugins/, benchmarks/) as packages.
