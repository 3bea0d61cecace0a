"""Collection rules for the doctest run over the whole repository."""

collect_ignore_glob = ["tests/golden/record_*.py", "benchmarks/*", "examples/*"]
