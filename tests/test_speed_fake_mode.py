"""The simulator's FakeTensorMode spells each dispatch-cache key exactly as torch's does.

SimFakeTensorMode builds the key of a plain FakeTensor argument without torch's TensorMetadata
detour (the speed issue); a key that differed could make the class-wide cache return another
op's output metadata, and with it other bytes. These tests compare the two keys element for
element, and the bypasses (which must still reach torch's code), on the arguments the suite's
ops pass: views, channels-last, conjugate and negative views, grads, lists, kwargs, scalars.
"""
from __future__ import annotations

import types

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, _BypassDispatchCache, _CacheKeyState

from pytest_vram.sim.fake_construction import new_fake_tensor
from pytest_vram.sim.fake_mode import SimFakeTensorMode, fake_tensors

aten = torch.ops.aten


def torchs_key(mode, func, args, kwargs):
    """The key torch's own ``_prep_args_for_hash`` builds for ``mode``: bound on the instance,
    so that its recursive calls (containers, shapes, strides) stay in torch's code too."""
    mode._prep_args_for_hash = types.MethodType(FakeTensorMode._prep_args_for_hash, mode)
    try:
        return mode._cache_key(_CacheKeyState(mode.shape_env), func, args, kwargs)
    finally:
        del mode._prep_args_for_hash


def expanded(key: tuple) -> list:
    """The simulator's key with each plain tensor's marked tuple written out as torch spells a
    ``TensorMetadata`` (``_flatten_into``: its fields in order, a shape or stride as its type,
    ``length_N`` and ``(int, value)`` per element, the constant fields of a strided dense tensor)."""
    out = []
    for element in key:
        if type(element) is tuple and element and element[0] is SimFakeTensorMode:
            (_, dtype, shape, stride, device, memory_format, offset, nbytes, requires_grad, quantized, conj, neg,
             inference) = element
            out += [dtype, torch.Size, f"length_{len(shape)}"]
            for size in shape:
                out += [int, size]
            out += [tuple, f"length_{len(stride)}"]
            for step in stride:
                out += [int, step]
            out += [device, torch.strided, memory_format, offset, nbytes, requires_grad, quantized, conj, neg,
                    inference, False, None, None, None]
        else:
            out.append(element)
    return out


def both_keys(mode, func, args, kwargs=None):
    kwargs = kwargs or {}
    ours = mode._cache_key(_CacheKeyState(mode.shape_env), func, args, kwargs)
    return ours.key, torchs_key(mode, func, args, kwargs).key


def argument_sets(mode):
    with mode:
        a = torch.empty(4, 6, dtype=torch.float16)
        b = torch.empty(2, 3, 8, 8).to(memory_format=torch.channels_last)
        c = torch.empty(5, 5, dtype=torch.complex64).conj()
        d = torch.empty(3, requires_grad=True)
        e = torch.empty(8, 8)[2:, 1::2]  # a view with an offset and strides
        f = torch._neg_view(torch.empty(4))
        g = torch.empty(2, 2, 3, 3, 3).to(memory_format=torch.channels_last_3d)
    return [
        (aten.mm.default, (a, a.t()), {}),
        (aten.add.Tensor, (b, b), {"alpha": 2}),
        (aten.mul.Tensor, (c, 1.5), {}),
        (aten.sum.dim_IntList, (d, [0], True), {"dtype": torch.float32}),
        (aten.clone.default, (e,), {"memory_format": torch.contiguous_format}),
        (aten.cat.default, ([a, a], 0), {}),
        (aten.abs.default, (f,), {}),
        (aten.relu.default, (g,), {}),
        (aten.empty.memory_format, ([2, 3],), {"dtype": torch.bfloat16, "device": torch.device("cpu"),
                                              "pin_memory": False}),
        (aten.view.default, (a, torch.Size([24])), {}),
        (aten.arange.start_step, (0, 10, 2), {"dtype": None}),
    ]


def test_keys_are_torchs_element_for_element_once_expanded():
    mode = SimFakeTensorMode(allow_non_fake_inputs=True)
    for func, args, kwargs in argument_sets(mode):
        ours, torchs = both_keys(mode, func, args, kwargs)
        assert expanded(ours) == list(torchs), func
        assert [type(x) for x in expanded(ours)] == [type(x) for x in torchs], func
        if any(isinstance(a, torch.Tensor) for a in (*args, *kwargs.values())):
            assert ours != torchs  # re-spelled: never found by a plain FakeTensorMode


def test_a_different_tensor_gives_a_different_key():
    mode = SimFakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        x, y, z = torch.empty(4, 6), torch.empty(6, 4).t(), torch.empty(4, 6, dtype=torch.float16)
    keys = {both_keys(mode, aten.neg.default, (t,))[0] for t in (x, y, z)}
    assert len(keys) == 3


@pytest.mark.parametrize("make", ["real", "other_mode"], ids=["non-fake tensor", "another mode's fake"])
def test_arguments_torch_refuses_to_cache_are_still_refused(make):
    mode = SimFakeTensorMode(allow_non_fake_inputs=True)
    if make == "real":
        foreign = torch.empty(3)
    else:
        with FakeTensorMode():
            foreign = torch.empty(3)
    with mode:
        ours_arg = torch.empty(3)
    reasons = []
    for key in (torchs_key, lambda m, *a: m._cache_key(_CacheKeyState(None), *a)):
        with pytest.raises(_BypassDispatchCache) as raised:
            key(mode, aten.add.Tensor, (ours_arg, [foreign]), {})
        reasons.append(raised.value.reason)
    assert reasons[0] == reasons[1] == ("non-fake tensor" if make == "real" else "not our fake")


def test_the_simulator_runs_under_the_fast_key_mode():
    with fake_tensors() as mode:
        assert isinstance(mode, SimFakeTensorMode)
        hits = FakeTensorMode.cache_hits
        x = torch.empty(16, 16)
        (x @ x) @ x  # the second mm has the first's key: a cache hit
        assert FakeTensorMode.cache_hits > hits



def _bnb_calls(mode):
    """One call of each :data:`PURE_CUSTOM_OPS` op, made under ``mode``, with the arguments
    bitsandbytes' NF4 path passes (bitsandbytes/functional.py ``quantize_4bit``,
    ``dequantize_4bit``, ``quantize_blockwise``, ``dequantize_blockwise``; ``gemm_4bit``)."""
    pytest.importorskip("bitsandbytes")  # registers torch.ops.bitsandbytes
    ops = torch.ops.bitsandbytes
    with mode:
        w = torch.empty(96, 64, dtype=torch.float16)
        packed = torch.empty(96 * 64 // 2, 1, dtype=torch.uint8)
        absmax = torch.empty(96, dtype=torch.float32)
        absmax8 = torch.empty(96, dtype=torch.uint8)
        x = torch.empty(2, 5, 64, dtype=torch.float16)
        code = torch.empty(256, dtype=torch.float32)
    return [
        (ops.quantize_4bit.default, (w, 64, "nf4", torch.uint8)),
        (ops.dequantize_4bit.default, (packed, absmax, 64, "nf4", [96, 64], torch.float16)),
        (ops.gemm_4bit.default, (x, packed, [96, 64], absmax, 64, "nf4")),
        (ops.quantize_blockwise.default, (absmax, code, 256)),
        (ops.dequantize_blockwise.default, (absmax8, absmax[:1], code, 256, torch.float32)),
    ]


def _described(out):
    outs = out if isinstance(out, tuple) else (out,)
    return [(o.shape, o.stride(), o.dtype, o.device, o.untyped_storage().nbytes()) for o in outs]


@pytest.mark.parametrize("index", range(5), ids=["quantize_4bit", "dequantize_4bit", "gemm_4bit",
                                                 "quantize_blockwise", "dequantize_blockwise"])
def test_bitsandbytes_kernels_are_cached_with_the_same_outputs(index):
    """A cache hit on a bitsandbytes op gives what its fake kernel gives (torch's own crosscheck
    re-runs the kernel on every hit and compares the metadata), in fresh storages."""
    mode = SimFakeTensorMode(allow_non_fake_inputs=True)
    mode.cache_crosscheck_enabled = True
    func, args = _bnb_calls(mode)[index]
    bypassed = FakeTensorMode.cache_bypasses["non-builtin"]
    with mode:
        first = func(*args)
        hits = FakeTensorMode.cache_hits
        again = func(*args)
    assert FakeTensorMode.cache_hits == hits + 1  # the op itself, not the kernel's torch.empty
    assert FakeTensorMode.cache_bypasses["non-builtin"] == bypassed
    assert _described(again) == _described(first)
    storages = {id(a.untyped_storage()) for a in args if isinstance(a, torch.Tensor)}
    outs = again if isinstance(again, tuple) else (again,)
    assert not storages & {id(o.untyped_storage()) for o in outs}


def test_a_plain_fake_mode_still_refuses_bitsandbytes_kernels():
    """The simulator's entries are keyed as its own: torch's mode bypasses the op as before."""
    func, args = _bnb_calls(SimFakeTensorMode(allow_non_fake_inputs=True))[2]
    func(*args)
    func(*args)
    plain = FakeTensorMode()
    func, args = _bnb_calls(plain)[2]
    bypassed = FakeTensorMode.cache_bypasses["non-builtin"]
    with plain:
        func(*args)
    assert FakeTensorMode.cache_bypasses["non-builtin"] == bypassed + 1


def _views(mode):
    with mode:
        x = torch.empty(4, 6, 8, dtype=torch.float16)
        y = x.transpose(0, 1)
    return [(x, [24, 8]), (x[1:], [3, 48]), (y, [6, 4, 8]), (y[:, :2], [6, 16])]


@pytest.mark.parametrize("index", range(4), ids=["contiguous", "offset", "transposed", "not-viewable"])
def test_unsafe_view_is_cached_as_the_view_torch_computes(index):
    """``_unsafe_view`` under the simulator's mode: what torch's FakeTensorMode returns (shape,
    strides, offset, the input's own storage, or the same error), now from the cache."""
    def run(mode):
        t, shape = _views(mode)[index]
        try:
            with mode:
                out = aten._unsafe_view.default(t, shape)
        except Exception as exc:  # noqa: BLE001 (compared below)
            return type(exc), str(exc)
        return out.shape, out.stride(), out.storage_offset(), out.untyped_storage() is t.untyped_storage()

    expected = run(FakeTensorMode())
    mode = SimFakeTensorMode()
    run(mode)
    hits, bypassed = FakeTensorMode.cache_hits, FakeTensorMode.cache_bypasses["unsafe view"]
    assert run(mode) == expected
    assert FakeTensorMode.cache_bypasses["unsafe view"] == bypassed
    if index != 3:
        assert expected[3] is True
        assert FakeTensorMode.cache_hits > hits


def _described_fully(t, inputs):
    return (type(t), t.shape, t.stride(), t.storage_offset(), t.dtype, t.device, t.requires_grad, t.is_conj(),
            t.is_neg(), t.untyped_storage().nbytes(), torch._C._dispatch_key_set(t),
            [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor) and a.untyped_storage() is t.untyped_storage()],
            sorted(vars(t).items(), key=lambda item: item[0]))


def test_a_cache_hit_makes_the_output_torchs_code_makes():
    """The simulator's spelling of a hit's output against torch's, entry for entry: views (the
    input's storage), strides, channels-last, conjugate and negative bits (torch's path)."""
    mode = SimFakeTensorMode(allow_non_fake_inputs=True)
    calls = argument_sets(mode)
    with mode:
        t = torch.empty(6, 4, requires_grad=True)
    calls += [(aten.t.default, (t,), {}), (aten.slice.Tensor, (t, 0, 1, 5), {}), (aten.mul.Tensor, (t, t), {}),
              (aten.expand.default, (t[:1], [3, 6, 4]), {}), (aten.permute.default, (t, [1, 0]), {}),
              (aten.neg.default, (calls[6][1][0],), {})]
    checked = []
    for func, args, kwargs in calls:
        with mode:
            func(*args, **kwargs)
        state = _CacheKeyState(mode.shape_env)
        key = mode._cache_key(state, func, args, kwargs)
        entry = FakeTensorMode.cache.get(key)
        if entry is None or not hasattr(entry, "output_infos"):
            continue
        for info in entry.output_infos:
            ours = mode._get_output_tensor_from_cache_entry(state, info, key, func, args)
            torchs = FakeTensorMode._get_output_tensor_from_cache_entry(mode, state, info, key, func, args)
            assert _described_fully(ours, args) == _described_fully(torchs, args), func
            checked.append(_described_fully(ours, args))
    assert len(checked) >= 11
    assert any(d[-1] for d in checked) and any(len(d[1]) == 4 for d in checked)  # views; channels-last


@pytest.mark.parametrize("requires_grad", [False, True])
def test_the_fast_constructor_makes_the_fake_tensor_torchs_makes(requires_grad):
    """``new_fake_tensor`` against ``FakeTensor(mode, elem, device)``: the same class, dispatch
    keys, device, metadata and instance attributes (memo slots, mode, constant...), and the same
    behaviour afterwards (an op on it, its memos read back as None)."""
    mode = SimFakeTensorMode(allow_non_fake_inputs=True)
    made = []
    for make in (new_fake_tensor, FakeTensor):
        elem = torch.empty_strided((3, 5), (1, 3), dtype=torch.bfloat16, device="meta", requires_grad=requires_grad)
        made.append(make(mode, elem, torch.device("cpu")))
    ours, torchs = made
    assert _described_fully(ours, ()) == _described_fully(torchs, ())
    assert ours.nonzero_memo is None and ours.item_memo is None and ours.nested_int_memo is None
    with mode:
        assert _described_fully(ours * 2, ()) == _described_fully(torchs * 2, ())


def _lifted(mode, make):
    with mode:
        out = make()
    constant = out.constant
    assert out.fake_mode is mode
    attributes = {name: value for name, value in vars(out).items() if name not in ("constant", "fake_mode")}
    return (type(out), out.shape, out.stride(), out.dtype, out.device, out.storage_offset(), out.requires_grad,
            out.is_leaf, out.untyped_storage().nbytes(), torch._C._dispatch_key_set(out),
            sorted(attributes.items(), key=lambda item: item[0]),
            None if constant is None else (type(constant), constant.dtype, constant.shape, constant.tolist()))


@pytest.mark.parametrize("make", [
    lambda: torch.tensor([0.5, -1.0, 0.25, 1.0]),                # bitsandbytes' get_4bit_type
    lambda: torch.tensor(0.0, dtype=torch.float32),             # torch's optimizers' step counters
    lambda: torch.tensor([[1, 2], [3, 4]], dtype=torch.int64),
    lambda: torch.tensor([7], dtype=torch.bfloat16),
    lambda: torch.tensor([0.5, 2.0], device="cuda"),            # lifted on CPU, then moved
    lambda: torch.tensor(3.0) * 2,
], ids=["table", "scalar", "int-matrix", "one-element", "to-cuda", "constant-prop"])
def test_a_lifted_tensor_is_the_fake_tensor_torch_makes(make):
    """``torch.tensor(data)`` under the simulator's mode (its direct lift) against torch's
    FakeTensorMode: the same fake tensor, attribute for attribute, the same constant (what
    ``.item()`` reads), and the converter's memo set as torch sets it."""
    assert _lifted(SimFakeTensorMode(allow_non_fake_inputs=True), make) == \
        _lifted(FakeTensorMode(allow_non_fake_inputs=True), make)


def test_the_direct_lift_is_taken_and_item_reads_its_constant():
    """The direct path runs (MetaConverter is not called for a fresh tensor), a one-element
    lift keeps its value for ``.item()``, and a lift of a tensor already converted, or of a
    view, still takes torch's path (which returns the memoized fake tensor)."""
    mode = SimFakeTensorMode(allow_non_fake_inputs=True)
    calls = []
    meta_converter = mode.fake_tensor_converter.meta_converter
    original = type(meta_converter).__call__
    type(meta_converter).__call__ = lambda self, *a, **k: calls.append(a[0]) or original(self, *a, **k)
    try:
        with mode:
            assert torch.tensor(2.5).item() == 2.5
            torch.tensor([1.0, 2.0, 3.0])
        assert calls == []
        real = torch.arange(6.0)
        view = real[2:]
        with mode:
            first = aten.lift_fresh.default(real)
            again = aten.lift_fresh.default(real)
            lifted_view = aten.lift_fresh.default(view)
        assert again is first  # torch's path, through the memo the direct lift set
        assert calls == [view] and lifted_view.shape == (4,)
    finally:
        type(meta_converter).__call__ = original


@pytest.mark.parametrize("then", [
    lambda g: g.expand(2),        # an alias that is no constant: the value is dropped
    lambda g: g.add_(torch.rand(1)),  # written with a non-constant: dropped
    lambda g: g * 2,              # constant propagation: kept, and the product is a constant
    lambda g: g.expand(1),        # propagated through a view: a constant sharing g's storage
], ids=["alias", "write", "propagate", "propagate-view"])
def test_a_lifted_constant_lives_and_dies_as_torchs(then):
    """What happens to a lifted constant afterwards depends on the converter knowing its storage
    (``add_constant_storage_mapping``) and MetaConverter its storage (the storage memo): without
    them an op on it took another path, or gave a view a storage of its own, and the FLUX tiny
    twin's step counted 4 bytes a real run does not (``guidance.expand(batch)``)."""
    def run(mode):
        with mode:
            g = torch.tensor([3.5])
            out = then(g)
        return (None if g.constant is None else g.constant.tolist(),
                None if out.constant is None else out.constant.tolist(), out.untyped_storage() is g.untyped_storage())
    assert run(SimFakeTensorMode(allow_non_fake_inputs=True)) == run(FakeTensorMode(allow_non_fake_inputs=True))
