"""runtime.state.store: LanceDB tables, atomic checkpoints, recovery and compaction."""

from __future__ import annotations

import doctest
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pytest

import runtime.state.store as store_module
from runtime.errors import StoreError
from runtime.state.reader import FolderReader
from runtime.state.store import CHECKPOINTS, Checkpoint, Store
from runtime.testing.procs import fresh_python


def rows(store: Store, name: str) -> dict[str, int]:
    t = store.read(name)
    return dict(zip(t.column("id").to_pylist(), t.column("n").to_pylist(), strict=True))


def people(ids: list[str], ns: list[int]) -> pa.Table:
    return pa.table({"id": ids, "n": pa.array(ns, pa.int64())})


def checkpoint(store: Store, epoch: int, started: float, names: list[str], **kw) -> Checkpoint:
    """Commit like the runtime does: the current version of every named table."""
    prev = store.last_checkpoint()
    cp = Checkpoint(
        epoch=epoch,
        started_at=started,
        positions=kw.get("positions", {}),
        versions={**prev.versions, **{n: store.version(n) for n in names}},
        meta=kw.get("meta", {}),
    )
    store.commit(cp)
    return cp


def test_doctests() -> None:
    assert doctest.testmod(store_module).failed == 0


def test_upsert_append_read(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    assert store.tables() == []
    store.upsert("t", people(["a", "b"], [1, 2]), key="id")
    store.upsert("t", people(["b", "c"], [20, 3]), key="id")
    store.upsert("t", people([], []), key="id")  # no-op
    assert rows(store, "t") == {"a": 1, "b": 20, "c": 3}
    store.append("t", people(["a"], [100]))  # append does not deduplicate
    assert sorted(store.read("t").column("id").to_pylist()) == ["a", "a", "b", "c"]
    assert store.exists("t") and store.tables() == ["t"]
    got = store.read("t", where="n >= 20", columns=["id"])
    assert got.column_names == ["id"]
    assert sorted(got.column("id").to_pylist()) == ["a", "b"]
    assert store.read("t", columns=["n"]).column_names == ["n"]
    # a second Store on the same folder sees the same data
    assert sorted(Store(tmp_path / "data").read("t").column("n").to_pylist()) == [1, 3, 20, 100]


def test_append_creates_and_conforms(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append("log", pa.table({"id": ["a"], "n": pa.array([1], pa.int64()), "x": [0.5]}))
    # columns reordered, one missing (null), an int32 cast to the table's int64
    store.append("log", pa.table({"n": pa.array([2], pa.int32()), "id": ["b"]}))
    t = store.read("log")
    assert t.schema.field("n").type == pa.int64()
    assert sorted(t.to_pylist(), key=lambda r: r["id"]) == [
        {"id": "a", "n": 1, "x": 0.5},
        {"id": "b", "n": 2, "x": None},
    ]


def test_errors_name_the_table(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(StoreError, match="'nope' does not exist"):
        store.read("nope")
    with pytest.raises(StoreError, match="'nope'"):
        store.table("nope")
    store.upsert("t", people(["a"], [1]), key="id")
    with pytest.raises(StoreError, match="upsert into 't'"):
        store.upsert("t", pa.table({"id": ["b"], "n": ["not a number"]}), key="id")
    with pytest.raises(StoreError, match="append to 't'"):
        store.append("t", pa.table({"id": ["b"], "n": ["not a number"]}))


def test_new_columns_widen_the_table(tmp_path: Path) -> None:
    """An app that adds an output column (alerts gained detected_at) keeps its old table:
    the rows written before read the new column as null."""
    store = Store(tmp_path)
    store.upsert("t", people(["a"], [1]), key="id")
    store.upsert("t", pa.table({"id": ["b"], "n": [2], "extra": [7]}), key="id")
    store.append("t", pa.table({"id": ["c"], "extra": [8]}))
    rows = sorted(store.read("t").to_pylist(), key=lambda r: r["id"])
    assert rows == [
        {"id": "a", "n": 1, "extra": None},
        {"id": "b", "n": 2, "extra": 7},
        {"id": "c", "n": None, "extra": 8},
    ]


def test_version_and_drop(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.upsert("t", people(["a"], [1]), key="id")
    v1 = store.version("t")
    store.upsert("t", people(["a"], [2]), key="id")
    assert store.version("t") > v1
    assert store.n_versions("t") >= 2
    store.drop("t")
    assert not store.exists("t")
    store.drop("t")  # dropping twice is harmless
    store.upsert("t", people(["z"], [9]), key="id")  # and the name can be reused
    assert rows(store, "t") == {"z": 9}


def test_last_checkpoint_and_commit(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.last_checkpoint() == Checkpoint()
    store.upsert("t", people(["a"], [1]), key="id")
    for epoch in range(1, 6):
        checkpoint(
            store, epoch, time.time(), ["t"], positions={"src": epoch * 10}, meta={"e": epoch}
        )
    cp = Store(tmp_path).last_checkpoint()
    assert cp.epoch == 5
    assert cp.positions == {"src": 50}
    assert cp.meta == {"e": 5}
    assert cp.versions == {"t": store.version("t")}
    # the log is trimmed to the last `keep` commits
    assert sorted(store.read(CHECKPOINTS).column("epoch").to_pylist()) == [3, 4, 5]


def test_recover_without_a_checkpoint_drops_managed_tables(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.upsert("t", people(["a"], [1]), key="id")
    cp = Store(tmp_path).recover(["t", "missing"])
    assert cp == Checkpoint()
    assert not Store(tmp_path).exists("t")


def test_recover_restores_committed_versions(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.upsert("customers", people(["a", "b"], [1, 2]), key="id")
    store.append("dead", people(["x"], [0]))
    checkpoint(store, 1, time.time(), ["customers", "dead"], positions={"f": 2})
    committed = rows(store, "customers")
    # a checkpoint that never committed: tables written, no commit row
    store.upsert("customers", people(["a", "c"], [10, 3]), key="id")
    store.append("dead", people(["y"], [0]))
    store.upsert("devices", people(["d"], [1]), key="id")  # created after the commit
    store.upsert("unmanaged", people(["u"], [1]), key="id")

    fresh = Store(tmp_path)
    cp = fresh.recover(["customers", "dead", "devices"])
    assert cp.epoch == 1 and cp.positions == {"f": 2}
    assert rows(fresh, "customers") == committed
    assert fresh.read("dead").column("id").to_pylist() == ["x"]
    assert not fresh.exists("devices")
    assert fresh.exists("unmanaged")  # not managed: left alone
    # the old Store (cached table handles) sees the restored data too
    assert rows(store, "customers") == committed
    # recovering again is a no-op, and writing on goes on from the committed state
    fresh.recover(["customers", "dead", "devices"])
    assert rows(fresh, "customers") == committed
    fresh.upsert("customers", people(["b"], [22]), key="id")
    checkpoint(fresh, 2, time.time(), ["customers"])
    fresh.upsert("customers", people(["b"], [99]), key="id")
    assert rows(Store(tmp_path), "customers")["b"] == 99
    Store(tmp_path).recover(["customers"])
    assert rows(Store(tmp_path), "customers") == {"a": 1, "b": 22}


def test_compaction_bounds_versions_and_keeps_the_commit_restorable(tmp_path: Path) -> None:
    store = Store(tmp_path)
    prev_started = 0.0
    for epoch in range(1, 5):
        started = time.time()
        for i in range(4):  # several small writes per checkpoint
            store.upsert("t", people([f"k{epoch}-{i}", "shared"], [i, epoch]), key="id")
        checkpoint(store, epoch, started, ["t"])
        prev_started = started
        time.sleep(0.01)
    committed = rows(store, "t")
    committed_version = store.last_checkpoint().versions["t"]
    before = store.n_versions("t")
    assert before >= 16
    # the runtime compacts right after a commit, keeping versions since the last checkpoint began
    store.compact("t", keep_newer_than=prev_started)
    store.compact(CHECKPOINTS, keep_newer_than=prev_started)
    assert store.n_versions("t") <= 8 < before
    assert rows(store, "t") == committed
    # written after the commit, then a crash: recovery restores the committed version
    store.upsert("t", people(["late"], [1]), key="id")
    fresh = Store(tmp_path)
    fresh.recover(["t"])
    assert rows(fresh, "t") == committed
    assert fresh.last_checkpoint().versions["t"] == committed_version
    assert fresh.last_checkpoint().epoch == 4


def test_compaction_keeps_commit_of_a_table_not_written_lately(tmp_path: Path) -> None:
    store = Store(tmp_path)
    prev = Checkpoint()
    for epoch in range(1, 6):
        started = time.time()
        if epoch <= 3:  # e.g. dead_letters: written early on, then no more bad rows
            store.upsert("t", people([f"k{epoch}"], [epoch]), key="id")
        cp = checkpoint(store, epoch, started, ["t"])
        if epoch == 5:  # compact_every=5, exactly as Runtime.checkpoint does
            store.compact(
                "t", keep_newer_than=prev.started_at or started, keep_version=cp.versions["t"]
            )
        prev = cp
        time.sleep(0.01)
    store.upsert("t", people(["late"], [1]), key="id")
    fresh = Store(tmp_path)
    fresh.recover(["t"])
    assert rows(fresh, "t") == {"k1": 1, "k2": 2, "k3": 3}


def _key_index(store: Store, name: str) -> dict[str, int] | None:
    for ix in store.table(name).list_indices():
        if list(ix.columns) == ["id"]:
            stats = store.table(name).index_stats(ix.name)
            return {"indexed": stats.num_indexed_rows, "unindexed": stats.num_unindexed_rows}
    return None


def test_an_upsert_key_is_indexed_and_keys_stay_unique_across_indexed_and_new_rows(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    store.upsert("p", people(["a", "b", "c"], [1, 2, 3]), key="id")
    assert _key_index(store, "p") == {"indexed": 3, "unindexed": 0}
    store.upsert("p", people(["c", "d"], [30, 4]), key="id")  # d: a fragment the index lacks
    assert _key_index(store, "p")["unindexed"] >= 1
    # one key in the indexed fragments (a), one only in the new fragment (d), one new (e)
    store.upsert("p", people(["a", "d", "e"], [10, 40, 5]), key="id")
    assert rows(store, "p") == {"a": 10, "b": 2, "c": 30, "d": 40, "e": 5}
    assert store.table("p").count_rows() == 5
    store.compact("p", keep_newer_than=time.time())  # folds the new rows into the index
    assert _key_index(store, "p") == {"indexed": 5, "unindexed": 0}
    store.upsert("p", people(["e", "f"], [50, 6]), key="id")
    assert rows(store, "p") == {"a": 10, "b": 2, "c": 30, "d": 40, "e": 50, "f": 6}


def test_a_table_written_before_key_indexes_gets_one_at_its_next_upsert(tmp_path: Path) -> None:
    Store(tmp_path).append("p", people(["a", "b"], [1, 2]))  # as an older version left it
    store = Store(tmp_path)
    assert _key_index(store, "p") is None
    store.upsert("p", people(["b", "c"], [20, 3]), key="id")
    assert _key_index(store, "p") is not None
    assert rows(store, "p") == {"a": 1, "b": 20, "c": 3}
    store.upsert("p", people(["c"], [30]), key="id")  # no second index on the same key
    assert len(store.table("p").list_indices()) == 1


def test_a_warm_store_connects_in_the_background_and_a_cold_one_on_first_use(
    tmp_path: Path,
) -> None:
    cold = Store(tmp_path / "cold")
    assert cold._db is None and not cold.exists("p")  # still not connected: no table
    warm = Store(tmp_path / "warm", warm=True)
    warm.close()  # waits for the background connect
    assert warm._db is not None
    warm.upsert("p", people(["a"], [1]), key="id")  # the connection it made serves writes
    assert rows(warm, "p") == {"a": 1}


WARM_IMPORTS = """
import sys
from runtime.state.store import Store
store = Store(sys.argv[1], warm=True, writer=sys.argv[2] == "writer")
store.close()
print(store._db is not None, "lance" in sys.modules)
"""


@pytest.mark.parametrize(("role", "expect"), [("reader", "True True"), ("writer", "True False")])
def test_a_warm_store_imports_what_its_first_use_would(tmp_path: Path, role, expect) -> None:
    """A warm store imports LanceDB in the background, and a reading one pylance too (its
    reads go through ``to_lance``: imported at the first read, it ran inside a replay's
    first checkpoint); a sink's store only writes, and pylance would be 80 MB for nothing."""
    got = fresh_python(WARM_IMPORTS, str(tmp_path), role, root=Path(__file__).resolve().parents[2])
    assert " ".join(got) == expect


@pytest.mark.parametrize("key_type", [pa.string(), pa.int64()])
def test_a_row_with_a_null_key_is_inserted_as_before_the_index(tmp_path: Path, key_type) -> None:
    store = Store(tmp_path)
    first = pa.table({"id": pa.array(["1", "2"]).cast(key_type), "n": [1, 2]})
    store.upsert("p", first, key="id")
    assert _key_index(store, "p") is not None
    nulled = pa.table({"id": pa.array([None, "3"]).cast(key_type), "n": [9, 3]})
    store.upsert("p", nulled, key="id")
    got = sorted((r["id"] is None, r["n"]) for r in store.read("p").to_pylist())
    assert got == [(False, 1), (False, 2), (False, 3), (True, 9)]


def test_a_key_a_btree_cannot_index_is_upserted_by_scan(tmp_path: Path) -> None:
    store = Store(tmp_path)  # polars writes large strings
    store.upsert("p", pa.table({"id": pa.array(["a", "b"], pa.large_string()), "n": [1, 2]}), "id")
    store.upsert("p", pa.table({"id": pa.array(["b", "c"], pa.large_string()), "n": [20, 3]}), "id")
    assert rows(store, "p") == {"a": 1, "b": 20, "c": 3}
    assert store.table("p").list_indices() == []


def test_two_writers_upserting_a_table_first_at_once_both_land(tmp_path: Path) -> None:
    import threading

    Store(tmp_path).append("p", people(["a"], [1]))  # written before key indexes
    stores, errors = [Store(tmp_path), Store(tmp_path)], []

    def write(store: Store, key: str) -> None:
        try:
            store.upsert("p", people([key], [2]), key="id")
        except Exception as err:  # reported below
            errors.append(err)

    threads = [
        threading.Thread(target=write, args=(s, k)) for s, k in zip(stores, "bc", strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert rows(Store(tmp_path), "p") == {"a": 1, "b": 2, "c": 2}


def test_a_writers_metadata_cache_stays_at_its_small_cap(tmp_path: Path, monkeypatch) -> None:
    """A sink only writes: LanceDB's metadata cache fills with every version's manifest and
    is never read back. The default cap let each sink's process climb by it in a soak."""
    import numpy as np

    monkeypatch.setattr(store_module, "WRITER_METADATA_CACHE_MB", 1)
    monkeypatch.setattr(store_module, "_SESSIONS", {})  # none of the other tests' sessions
    sizes = {}
    for writer in (True, False):
        store = Store(tmp_path / f"w{writer}", writer=writer)
        for i in range(120):
            keys = np.arange(i * 2_000, (i + 1) * 2_000)
            store.upsert(
                "alerts", pa.table({"event_id": keys, "score": keys * 0.5}), key="event_id"
            )
            if i % 20 == 19:
                store.compact("alerts", keep_newer_than=time.time() - 60)
        assert store.table("alerts").count_rows() == 240_000
        sizes[writer] = store_module._session(store.metadata_cache_mb).size_bytes / 2**20
    assert sizes[True] <= 1.5 < sizes[False], sizes  # measured: 1.19 and 2.96


def _cut_off_create(store: Store, name: str) -> Path:
    """A table as a create killed before its first manifest leaves it: data files (and
    maybe the transaction) written, no ``_versions`` (seen by kill -9 of a loop of
    creates: 9 of 15 kills)."""
    store.append(name, people(["a", "b"], [1, 2]))
    folder = store.path / f"{name}.lance"
    shutil.rmtree(folder / "_versions")
    assert any((folder / "data").iterdir())
    return folder


@pytest.mark.parametrize("write", ["append", "upsert"])
def test_a_table_whose_create_was_cut_off_is_no_table_and_the_next_write_creates_it(
    tmp_path: Path, write: str
) -> None:
    _cut_off_create(Store(tmp_path), "metrics")
    store = Store(tmp_path)  # the process that comes back after the kill
    assert not store.exists("metrics") and "metrics" not in store.tables()
    assert not FolderReader(tmp_path).exists("metrics")
    assert "metrics" not in FolderReader(tmp_path).tables()  # `edgecore sql` skips it
    with pytest.raises(StoreError, match="does not exist"):
        store.read("metrics")
    if write == "append":
        store.append("metrics", people(["c"], [3]))
    else:
        store.upsert("metrics", people(["c"], [3]), key="id")
    assert rows(Store(tmp_path), "metrics") == {"c": 3}  # none of the cut-off rows
    assert FolderReader(tmp_path).count_rows("metrics") == 1


def test_recovery_and_drop_pass_over_a_table_whose_create_was_cut_off(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.upsert("t", people(["a"], [1]), key="id")
    checkpoint(store, 1, time.time(), ["t"])
    folder = _cut_off_create(store, "late")
    cp = Store(tmp_path).recover(["t", "late"])
    assert cp.epoch == 1 and rows(Store(tmp_path), "t") == {"a": 1}
    Store(tmp_path).drop("late")
    assert not folder.exists()  # its orphaned files are gone with it


def test_two_writers_creating_a_table_at_once_keep_both_rows(tmp_path: Path) -> None:
    """Lance commits a second create of a table as an overwrite of the first: without the
    create lock one writer's first rows vanished in 7 of 10 rounds, without an error."""
    import threading

    for round_ in range(8):
        folder = tmp_path / str(round_)
        stores, errors = [Store(folder), Store(folder)], []
        for s in stores:
            assert s.db is not None  # both connected: the race is the create alone

        def write(store: Store, key: str, how: str, errors: list = errors) -> None:
            try:
                if how == "upsert":
                    store.upsert("p", people([key], [1]), key="id")
                else:
                    store.append("p", people([key], [1]))
            except Exception as err:  # reported below
                errors.append(err)

        how = "upsert" if round_ % 2 else "append"
        threads = [
            threading.Thread(target=write, args=(s, k, how))
            for s, k in zip(stores, "ab", strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [] and rows(Store(folder), "p") == {"a": 1, "b": 1}, round_


def test_forgetting_the_caches_starts_an_empty_session_and_the_store_goes_on(
    tmp_path: Path,
) -> None:
    """After a compaction deleted the old versions, their cached manifests and key indexes
    are dead weight: ``forget_cached`` drops them; reads and upserts go on from disk."""
    store = Store(tmp_path)
    for i in range(12):
        store.upsert("t", people([f"k{j}" for j in range(500)], [i] * 500), key="id")
        if i % 4 == 3:
            store.compact("t", keep_newer_than=time.time())
    size = store_module.METADATA_CACHE_MB
    before = store_module._SESSIONS[size]
    assert before.size_bytes > 0
    store.forget_cached()
    assert size not in store_module._SESSIONS  # the next call opens a new session
    assert rows(store, "t") == {f"k{j}": 11 for j in range(500)}
    store.upsert("t", people(["k0", "new"], [99, 1]), key="id")
    assert store_module._SESSIONS[size] is not before
    got = rows(store, "t")
    assert got["k0"] == 99 and got["new"] == 1 and len(got) == 501
