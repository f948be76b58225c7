"""The edge's forward log on disk: what a restart keeps, torn and corrupt files, trimming."""

from __future__ import annotations

import pyarrow as pa
import pytest

import runtime.edge.log as edge_log
from runtime.edge.log import ForwardLog, read_payload
from runtime.errors import EdgeLogError


def batch(i: int) -> pa.Table:
    return pa.table({"key": [f"k{i}"] * 3, "value": [float(i)] * 3})


def fill(path, n: int) -> ForwardLog:
    log = ForwardLog(path)
    for i in range(1, n + 1):
        assert log.append(batch(i), watermark=i * 10).seq == i
    log.close()
    return log


def test_a_restart_keeps_what_the_core_lacks_up_to_the_edges_cut(tmp_path):
    fill(tmp_path, 10)
    log = ForwardLog(tmp_path, keep_from=3, keep_to=7)  # core committed 3, edge 7
    assert [e.seq for e in log.entries] == [4, 5, 6, 7]
    assert read_payload(log.entries[0].payload).column("value").to_pylist() == [4.0] * 3
    assert log.entries[0].watermark == 40 and log.entries[0].rows == 3
    assert log.append(batch(99), None).seq == 8  # 8..10 were cut: made again by the replay
    log.close()
    again = ForwardLog(tmp_path, keep_from=3, keep_to=8)
    assert [e.seq for e in again.entries] == [4, 5, 6, 7, 8]
    assert read_payload(again.entries[-1].payload).column("value").to_pylist() == [99.0] * 3


def test_a_torn_tail_is_dropped(tmp_path):
    fill(tmp_path, 5)
    seg = next(tmp_path.glob("seg-*.log"))
    seg.write_bytes(seg.read_bytes()[:-7])  # the last record cut short by a crash
    assert [e.seq for e in ForwardLog(tmp_path, 0, 4).entries] == [1, 2, 3, 4]
    # an entry the checkpoint relies on that is torn is refused, never skipped
    fill(tmp_path / "b", 5)
    seg = next((tmp_path / "b").glob("seg-*.log"))
    seg.write_bytes(seg.read_bytes()[:-7])
    with pytest.raises(EdgeLogError, match="lacks entries the last checkpoint relies on"):
        ForwardLog(tmp_path / "b", 0, 5)


@pytest.mark.parametrize("damage", ["flip", "garbage", "missing"])
def test_a_corrupt_or_missing_log_is_refused_with_the_folder_named(tmp_path, damage):
    fill(tmp_path, 6)
    seg = next(tmp_path.glob("seg-*.log"))
    data = bytearray(seg.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF  # a bit flipped inside entry 3 or 4: its CRC fails
        seg.write_bytes(bytes(data))
    elif damage == "garbage":
        seg.write_bytes(b"\x00garbage" * 50)
    else:
        seg.unlink()
    before = {p.name: p.read_bytes() for p in tmp_path.glob("seg-*.log")}
    with pytest.raises(EdgeLogError) as err:
        ForwardLog(tmp_path, keep_from=1, keep_to=6)
    assert str(tmp_path) in str(err.value) and "delete it" in str(err.value)
    # refused as it is: nothing cut off that a backup or an operator may still want
    assert {p.name: p.read_bytes() for p in tmp_path.glob("seg-*.log")} == before


def test_trim_drops_only_segments_the_core_committed(tmp_path, monkeypatch):
    monkeypatch.setattr(edge_log, "SEGMENT_BYTES", 1)  # one entry per segment
    fill(tmp_path, 6)
    log = ForwardLog(tmp_path, keep_from=0, keep_to=6)
    assert len(list(tmp_path.glob("seg-*.log"))) == 6
    before = log.disk_bytes
    assert log.trim(3) > 0 and log.disk_bytes < before
    assert sorted(int(p.stem[4:]) for p in tmp_path.glob("seg-*.log")) == [4, 5, 6]
    log.trim(10)
    assert len(list(tmp_path.glob("seg-*.log"))) == 1  # the newest is written on
    log.close()
    assert [e.seq for e in ForwardLog(tmp_path, keep_from=6, keep_to=6).entries] == []


def test_the_receivers_client_matches_its_class():
    from runtime.cluster.clients import check_client
    from runtime.edge.receiver import Receiver, ReceiverClient

    check_client(ReceiverClient, Receiver)


def test_a_batch_larger_than_one_call_is_logged_in_slices_and_arrives_whole(
    tmp_path, monkeypatch
) -> None:
    """A call to the core carries at least one entry, so no entry may outgrow a call: a
    gate's backlog dispatched at once goes in slices, each delivered (and, after a
    timeout, sent again) on its own; the watermark travels with the last."""
    import runtime.edge.link as link_module
    from runtime.cluster.handles import resolve, spawn
    from runtime.edge.link import EdgeLink, LinkSpec
    from runtime.edge.receiver import Receiver, ReceiverClient
    from runtime.entities.clients import ShardClient
    from runtime.entities.shard import Shard
    from runtime.testing import Tally

    monkeypatch.setattr(link_module, "MAX_SEND_BYTES", 4_000)
    core = ShardClient(
        spawn(Shard, Tally, None, 0, 1, str(tmp_path / "core"), name="c", mode="local")
    )
    targets = {"tallies": (Tally, [core], 1, [])}
    rx = ReceiverClient(spawn(Receiver, "eu-1", targets, name="r", mode="local"))
    link = EdgeLink(LinkSpec("out", "tallies", rx, str(tmp_path / "log")), "edge", "eu-1")
    rows = pa.table({"key": [f"k{i % 7}" for i in range(2_000)]})
    link.send(rows, watermark=99)
    assert link.settle(10.0) == 0
    last = link.log.last
    link.close()
    logged = ForwardLog(tmp_path / "log", keep_from=0, keep_to=last).entries
    assert len(logged) >= 3 and sum(e.rows for e in logged) == 2_000
    assert all(len(e.payload) <= 3 * 4_000 for e in logged)  # (IPC framing on top of nbytes)
    assert [e.watermark for e in logged][-1] == 99 and {e.watermark for e in logged[:-1]} == {None}
    want = {f"k{j}": sum(1 for i in range(2_000) if i % 7 == j) for j in range(7)}
    assert {k: resolve([core.get(k)])[0]["n"] for k in want} == want


def test_slices_of_a_dictionary_column_carry_only_their_own_values() -> None:
    from runtime.edge.link import entry_slices
    from runtime.edge.log import to_payload

    values = pa.array([f"merchant-{i:06d}-" + "x" * 40 for i in range(20_000)])
    codes = pa.array([i % 20_000 for i in range(40_000)], pa.int32())
    table = pa.table({"m": pa.DictionaryArray.from_arrays(codes, values), "v": range(40_000)})
    parts = entry_slices(table, max_bytes=200_000)
    assert len(parts) > 5 and sum(p.num_rows for p in parts) == 40_000
    whole = len(to_payload(table))
    assert sum(len(to_payload(p)) for p in parts) < 2 * whole  # not the dictionary each time
    assert all(p.schema == table.schema for p in parts)
    assert pa.concat_tables(parts).column("m").to_pylist() == table.column("m").to_pylist()
