"""The simulator: run a test body under fake tensors and predict a GPU's memory.

:mod:`.backend` is the ``sim`` backend; :mod:`.allocator` models the CUDA caching allocator;
:mod:`.attention` picks the attention kernel of the target. Shims for libraries that resist
fake tensors live here too, one module per library.
"""
