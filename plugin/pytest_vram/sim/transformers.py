"""Shim: transformers' mask helpers under fake tensors.

``masking_utils.find_packed_sequence_indices`` looks at the position ids to see whether
several sequences are packed in one row. It cannot read a fake tensor, so it treats fakes as
traced and keeps a packed-sequence mask, building a different attention mask (and extra
temporaries) than the GPU would for the same batch. While the shim is active a fake input
gives ``None``: no packing, which is what transformers finds on the GPU for the ordinary
position ids it makes when none are passed (a simulated batch of packed sequences is not
supported).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch._subclasses.fake_tensor import FakeTensor


@contextlib.contextmanager
def unpacked_sequences() -> Iterator[None]:
    try:
        from transformers import masking_utils
    except ImportError:
        yield
        return
    original = masking_utils.find_packed_sequence_indices

    def find_packed_sequence_indices(position_ids):
        if isinstance(position_ids, FakeTensor):
            return None
        return original(position_ids)

    masking_utils.find_packed_sequence_indices = find_packed_sequence_indices
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original
