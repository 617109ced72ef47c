"""The benchmark suite's glue to pytest: importing fixtures.suite imports the model libraries
before any test is measured (see fixtures/__init__.py), and registers the suite's
implementation of pytest-vram's hooks (the library versions its histories record)."""
from fixtures.suite import pytest_vram_libraries  # noqa: F401  (a hook implementation)
from fixtures.suite import (  # noqa: F401  (hook implementations: --vram-cases)
    pytest_addoption, pytest_collection_modifyitems, pytest_configure, pytest_report_header)
