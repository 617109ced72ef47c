"""``pytest-vram merge``: join the histories of shards (``--vram-shard``, or any runs of
disjoint cases) into one ``--vram-json`` file, in the serial run's order.

Cases are told apart by identity (the node id; ``case`` in histories older than it): two tests
that share a display name are two cases, not a duplicate. An input marked incomplete
(``"complete": false``) makes the merged file incomplete too, with a note.

Refused, with one clear error naming the files: a case in two inputs, inputs measured with
different backends, GPU profiles, GPUs or library versions (their numbers do not belong in one
history), and any file :func:`history.load` refuses. The output is written atomically.
"""
from __future__ import annotations

from .history import History, HistoryError, in_order, load, vram_json
from .schema import identity

MUST_AGREE = ("backend", "gpu_profile", "gpu_name", "libraries")


def merge(paths: list[str]) -> tuple[dict, list[str]]:
    """The merged document, and notes for the user."""
    histories = [load(p) for p in paths]
    first = histories[0]
    for other in histories[1:]:
        for key in MUST_AGREE:
            if first.machine_info.get(key) != other.machine_info.get(key):
                raise HistoryError(f"{first.path} and {other.path} were measured differently: "
                                   f"{key} {first.machine_info.get(key)!r} vs {other.machine_info.get(key)!r}")
    seen: dict[str, str] = {}
    records = []
    for history in histories:
        for rec in history.records:
            key = identity(rec)
            if key in seen:
                where = "twice in " + history.path if seen[key] == history.path else \
                    f"in both {seen[key]} and {history.path}"
                raise HistoryError(f"case {key!r} is {where}; shards must not overlap")
            seen[key] = history.path
            records.append(rec)
    order, notes = _common_order(histories)
    incomplete = [h.path for h in histories if not h.complete]
    notes += [f"note: {path} is incomplete (an interrupted session): so is the merged file" for path in incomplete]
    machine = dict(first.machine_info) | {"merged_from": [h.path for h in histories]}
    return vram_json(in_order(records, order), machine, order, complete=not incomplete), notes


def _common_order(histories: list[History]) -> tuple[list[str], list[str]]:
    orders = {tuple(h.order) for h in histories}
    if len(orders) == 1 and histories[0].order:
        return histories[0].order, []
    return [], ["note: the inputs do not share one selection order (not shards of one run?); "
                "records are kept in the order of the inputs"]
