"""The benchmark suite's glue to pytest: importing fixtures.suite imports the model libraries
before any test is measured (see fixtures/__init__.py), and registers the suite's
implementation of pytest-vram's hooks (the library versions its histories record)."""
from fixtures.suite import pytest_vram_libraries  # noqa: F401  (a hook implementation)
