"""Pub-sub: topics with offsets, partitions, retention and consumer groups (``topic``),
a kind's output topics hosted inside its shards (``colocated``), and their log on disk
(``durable``, ``segments``; read without Ray by ``folder``).

>>> import pyarrow as pa
>>> from runtime.topics.topic import Topic, next_offsets

**Partitions.** A topic may have several partitions, each its own log with its own
offsets (from 0), retention limits and order. With a ``partition_key`` the rows
of one key always go to the same partition (a stable hash, the same in every
process), so they stay in order; without one, each published batch goes whole to
the next partition in turn. Rows of a partitioned topic carry ``_partition`` next
to ``_offset``; a topic with one partition (the default) adds only ``_offset``,
as it always did, so sinks and tables fed by it keep their columns.

>>> orders = Topic("orders", partitions=2, partition_key="customer")
>>> orders.publish(pa.table({"customer": ["b", "a", "b", "c"], "x": [1, 2, 3, 4]}))
4
>>> orders.end_offsets()                       # rows of each partition
{0: 3, 1: 1}
>>> orders.read(0, partition=0).select(["customer", "x", "_offset"]).to_pylist()
[{'customer': 'b', 'x': 1, '_offset': 0}, {'customer': 'b', 'x': 3, '_offset': 1}, {'customer': 'c', 'x': 4, '_offset': 2}]
>>> got = orders.poll("billing", max_rows=2)   # fair: a share from each partition
>>> got.select(["_partition", "_offset", "x"]).to_pylist()
[{'_partition': 0, '_offset': 0, 'x': 1}, {'_partition': 1, '_offset': 0, 'x': 2}]
>>> orders.commit("billing", next_offsets(got))
>>> orders.groups()["billing"]["lag"]           # rows not committed, over all partitions
2

**Durable offsets.** ``snapshot()`` is a JSON-able record of every partition's
offsets and every group's committed offsets; ``restore()`` on a new, empty topic
(after a restart) continues from there. A topic with a ``log_dir`` (the runtime's
default: ``<data>/_topics``) also writes its rows to segment files at each snapshot
and loads them back in ``restore()`` (:mod:`runtime.topics.durable`), so a group
resumes from its commit with every row still retained. Without one the log lives in
memory only: new rows get offsets after the old ones, and a group whose commit is
before the new log start has those rows counted as ``skipped``:

>>> import json
>>> saved = json.loads(json.dumps(orders.snapshot()))
>>> again = Topic("orders", partitions=2, partition_key="customer")
>>> again.restore(saved)
>>> again.publish(pa.table({"customer": ["b"], "x": [5]}))
5
>>> again.poll("billing").select(["_partition", "_offset", "x"]).to_pylist()
[{'_partition': 0, '_offset': 3, 'x': 5}]
>>> again.groups()["billing"]["skipped"]        # offsets 1, 2 of partition 0 were lost
2
"""
