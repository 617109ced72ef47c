"""Repository-level conftest: loads the benchmark suite's glue (fixtures/suite.py)."""
pytest_plugins = ["fixtures.suite"]
