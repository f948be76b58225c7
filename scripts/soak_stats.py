"""The soak's verdicts: does a series settle, or grow without bound?

A series is sampled every few seconds over the soak. The first quarter is warm-up
(imports, caches, the first checkpoints, the dedup index filling its first segment)
and is left out. On the rest an ordinary least-squares line is fitted; a series
**grows** when both hold:

* the slope is real, not noise: more than 3 standard errors above 0;
* it matters: at that slope the series would grow by more than ``allow`` of its level
  (10 % by default) per hour, and by more than an absolute floor (e.g. 32 MB of RSS,
  2 table versions) — a few bytes a minute is not a leak worth failing a soak on;
* its level rises: the mean of each third of the run is above the last's. A sawtooth
  (a log truncated at each checkpoint, versions cleaned every few commits) has
  autocorrelated residuals that make the slope look significant over a few cycles; its
  thirds' means do not climb. (Means, not peaks: one spike late in the second third hid
  a shard's steady climb in a soak.)

A sawtooth with a reset by design (a write-ahead log truncated at each commit, table
versions cleaned every 20 writes) is judged by what it returns to, as a garbage-collected
heap is judged after each collection: once the judged part of the run holds two resets
(a drop by more than a third of the level, and more than the floor), the series grows
only if the value right after each reset climbs: at more than ``allow`` (and the floor)
an hour, by more than the floor between two resets, or significantly (3 standard
errors) over three or more; a count (table versions, which move in whole steps) must
also climb by more than the floor from the first reset to the last. The resets must
span a third of the judged run: a leak that lifts the level until no drop reaches a
third of it leaves two resets early on, and the fit over the whole run decides. With few cycles in a run, the thirds' means of a bounded sawtooth rise
or fall with where the run happens to end in its cycle (a table's versions, 8 -> 27 every
four minutes, failed a 12-minute soak that way).

What is judged of a process is its own memory: its RSS without its pages of Ray's object
store and of shared libraries' files (``own_mb``). The store is one file in /dev/shm that
every worker maps when it reads or writes an object: a page once touched stays resident
in that process, so these
pages are a high-water mark of the store's use, bounded by its capacity
(``object_store_memory``, 30 % of RAM by default), not a leak of the process. They are
reported as the largest of any process (``object_store_pages_mb``) beside that capacity,
and fail the soak only past half of it (30 minutes at 230k events/s took the raylet's
4 -> 34 MB of a 7 GB store, growing ever more slowly). Other shared memory (a tmpfs file
mapped by a topic) stays in ``own_mb``. A library's pages (its code and read-only data)
are paged in from its file as the process first runs that code, and stay: bounded by the
file's size, shared by every process that maps it (LanceDB's is 185 MB; a sink's grew
144 -> 225 MB of file pages in its first two minutes, as compaction and index code ran
for the first time). They are reported as the largest of any process
(``library_pages_mb``), failing only if the number of library files a process maps
climbs after the warm-up; a mapped data file stays in ``own_mb``.

Output tables that keep every alert (``alerts``, ``dead_letters``) grow with the input
by design; for them the test is that their bytes per event do not accelerate: the
second half's growth per acknowledged event at most 1.5 times the first half's.

>>> flat = [100.0 + (i % 3) for i in range(40)]
>>> verdict(list(range(40)), flat, floor=5.0)["grows"]
False
>>> leak = [100.0 + 4.0 * i for i in range(40)]
>>> verdict([10.0 * i for i in range(40)], leak, floor=5.0)["grows"]
True

A sawtooth judged by its resets: one that returns a step higher once (table versions,
cleaned by age, 6 then 7 after each cleanup) is bounded; one that returns ever higher
is not.

>>> def saw(lows):  # one cycle of 10 samples per low, each climbing from it by 18
...     return [low + 2.0 * k for low in lows for k in range(10)]
>>> t = [10.0 * i for i in range(90)]
>>> verdict(t, saw([6, 6, 6, 6, 6, 6, 7, 7, 7]), floor=2.0, count=True)["grows"]
False
>>> verdict(t, saw([6, 8, 10, 12, 14, 16, 18, 20, 22]), floor=2.0, count=True)["grows"]
True
"""

from __future__ import annotations

import math
from typing import Any

WARM_UP = 0.25


def ols(t: list[float], y: list[float]) -> tuple[float, float]:
    """Slope and its standard error of ``y`` over ``t``."""
    n = len(t)
    mt, my = sum(t) / n, sum(y) / n
    sxx = sum((a - mt) ** 2 for a in t)
    if n < 3 or sxx == 0:
        return 0.0, math.inf
    slope = sum((a - mt) * (b - my) for a, b in zip(t, y, strict=True)) / sxx
    resid = [b - (my + slope * (a - mt)) for a, b in zip(t, y, strict=True)]
    se = math.sqrt(sum(r * r for r in resid) / (n - 2) / sxx)
    return slope, se


def verdict(
    t: list[float], y: list[float], floor: float, allow: float = 0.10, count: bool = False
) -> dict[str, Any]:
    """Whether ``y`` (sampled at seconds ``t``) keeps growing after the warm-up;
    ``count``: ``y`` counts things (table versions), which move in whole steps."""
    skip = int(len(t) * WARM_UP)
    t2, y2 = t[skip:], y[skip:]
    slope, se = ols(t2, y2)
    level = sum(y2) / len(y2) if y2 else 0.0
    per_hour = slope * 3600.0
    significant = se == 0 and slope > 0 or (se not in (0, math.inf) and slope > 3 * se)
    third = max(1, len(y2) // 3)
    parts = [y2[i * third : (i + 1) * third] or [0.0] for i in range(3)]
    means = [sum(p) / len(p) for p in parts]
    rising = means[0] < means[1] < means[2]
    grows = bool(significant and rising and per_hour > max(allow * abs(level), floor))
    drops = [i for i in range(1, len(y2)) if y2[i - 1] - y2[i] > max(floor, y2[i - 1] / 3)]
    troughs = [y2[i] for i in drops]
    judged = t2[-1] - t2[0] if len(t2) > 1 else 0.0
    # a sawtooth, its resets spread over the run: does what it returns to climb? (two
    # resets close together say nothing of the rest of the run, where a leak may have
    # lifted the level so far that no drop reaches a third of it: the fit above decides)
    if len(drops) >= 2 and t2[drops[-1]] - t2[drops[0]] >= judged / 3:
        rise, span = troughs[-1] - troughs[0], t2[drops[-1]] - t2[drops[0]]
        if len(drops) == 2:  # (a line through two points has no error to test against)
            low_slope, real = rise / max(span, 1e-9), rise > floor
        else:
            low_slope, low_se = ols([t2[i] for i in drops], troughs)
            real = low_slope > 3 * low_se
            if count:  # a count stepping 6 -> 7 once in an hour is a significant slope
                real = real and rise > floor  # of ~2 an hour, and no growth
        grows = bool(real and low_slope * 3600.0 > max(allow * abs(level), floor))
    return {
        "first": y[0] if y else None,
        "last": y[-1] if y else None,
        "max": max(y) if y else None,
        "slope_per_hour": per_hour,
        "t_stat": (slope / se) if se not in (0, math.inf) else None,
        "thirds": means,
        "troughs": troughs,
        "grows": grows,
    }


def per_event(events: list[float], y: list[float]) -> dict[str, Any]:
    """Bytes an append-only output grows per acknowledged event, first half vs second."""
    mid = len(y) // 2
    if mid < 2 or events[-1] <= events[mid] or events[mid] <= events[0]:
        return {"first_half": None, "second_half": None, "accelerates": False}
    first = (y[mid] - y[0]) / (events[mid] - events[0])
    second = (y[-1] - y[mid]) / (events[-1] - events[mid])
    return {
        "first_half": first,
        "second_half": second,
        # + 0.1 byte/event: a table a few bytes larger is not an acceleration
        "accelerates": bool(second > 1.5 * max(first, 0.0) + 0.1),
    }


#: outputs kept by design (until retention, for topics): judged by bytes per event
APPEND_ONLY = ("alerts", "dead_letters", "model_metrics", "_checkpoints", "_models", "_topics")
MB = 2**20


def own_mb(sample: dict[str, Any]) -> dict[str, float]:
    """Each role's RSS without its pages of the object store and of libraries' files (see
    the module's docstring)."""
    parts = sample.get("rss_parts_mb", {})
    return {
        role: rss - parts.get(role, {}).get("plasma", 0.0) - parts.get(role, {}).get("code", 0.0)
        for role, rss in sample["rss_mb"].items()
    }


def largest_part(sample: dict[str, Any], part: str = "plasma") -> float:
    """One part of a sample's processes' memory, the largest of any role: the object
    store's resident pages (each process maps the file), or the libraries' (``"code"``),
    or how many library files a role maps (``"libraries"``)."""
    return max([p.get(part, 0.0) for p in sample.get("rss_parts_mb", {}).values()] or [0.0])


def judge(run: dict[str, Any]) -> dict[str, Any]:
    """Every series of a soak's samples judged: each role's own memory, the data folder's
    entries and table versions bounded (:func:`verdict`), append-only outputs linear in
    the events (:func:`per_event`), the object store's pages reported; and whether the
    committed profiles hold exactly the events acknowledged."""
    samples = run["samples"]
    t = [s["t"] for s in samples]
    acked = [float(s["acked"]) for s in samples]
    series: dict[str, dict[str, Any]] = {}
    own = [own_mb(s) for s in samples]

    def each(field: str, floor: float, values: list[dict[str, float]]) -> None:
        count = field == "versions"
        for name in sorted({k for v in values for k in v}):
            y = [float(v.get(name, 0.0)) for v in values]
            if field == "size_mb" and name in APPEND_ONLY:
                in_bytes = [v * MB for v in y]
                series[f"{field}:{name}"] = {**per_event(acked, in_bytes), "kind": "per_event"}
            else:
                series[f"{field}:{name}"] = {
                    **verdict(t, y, floor, count=count),
                    "kind": "bounded",
                }

    each("own_mb", 32.0, own)
    each("versions", 2.0, [s["versions"] for s in samples])
    each("size_mb", 8.0, [s["size_mb"] for s in samples])
    series["own_mb:total"] = {**verdict(t, [sum(v.values()) for v in own], 64.0), "kind": "bounded"}
    pages = [largest_part(s) for s in samples]
    capacity = run.get("object_store_mb")
    series["object_store_pages_mb"] = {
        **verdict(t, pages, 32.0),
        "kind": "reported",
        "capacity_mb": capacity,
        "grows": bool(capacity and max(pages) > capacity / 2),  # past half: a real problem
    }
    code = [largest_part(s, "code") for s in samples]
    libs = [largest_part(s, "libraries") for s in samples]
    judged = libs[int(len(libs) * WARM_UP) :] or [0.0]
    series["library_pages_mb"] = {
        **verdict(t, code, 32.0),
        "kind": "reported",
        "libraries": libs[-1] if libs else 0,
        # bounded only while the libraries are: a process mapping ever more of them (a
        # JIT's or a compile cache's new files) grows, whatever each one's pages
        "grows": judged[-1] > judged[0],
    }
    bad = [k for k, v in series.items() if v.get("grows") or v.get("accelerates")]
    # the capacity probe's events are in the profiles too
    acked_total = run["load"].get("accepted", 0) + run["capacity_accepted"]
    exact = run["profiles_txn_count"] == acked_total
    return {
        "series": series,
        "growing": bad,
        "acked_accepted": acked_total,
        "exact": exact,
        "ok": not bad and exact and run["serve_exit"] == 0 and len(samples) >= 4,
    }
