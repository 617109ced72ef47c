"""Repository-level conftest. It loads nothing of the benchmark suite: the suite's glue
(fixtures/suite.py, which imports transformers, diffusers, peft, bitsandbytes and lycoris) is
loaded by benchmarks/conftest.py, and by the tests that import it, so plugin-only tests start
without those libraries."""
