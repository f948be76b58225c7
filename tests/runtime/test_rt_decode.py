"""runtime.ingest.decode: poison stays alone, depth is counted outside strings."""

from __future__ import annotations

from runtime.ingest.decode import decode_messages, too_deep


def test_one_poison_message_among_good_ones_is_one_dead_letter():
    table = decode_messages([b'{"event_id": 1}', b"{not json", b'[{"event_id": 2}]'])
    rows = table.to_pylist()
    assert [r["event_id"] for r in rows if r.get("event_id") is not None] == [1, 2]
    assert sum(1 for r in rows if r.get("_edgecore_malformed")) == 1


def test_depth_counts_brackets_outside_strings_only():
    assert not too_deep(b'{"a": "' + b"[" * 500 + b'"}')
    assert too_deep(b"[" * 65 + b"]" * 65)
    assert not too_deep(b"[" * 64 + b"]" * 64)
    assert too_deep(b'{"a": ' + b"[" * 64 + b"]" * 64 + b"}")
