"""Labels, on the event or late: what the customer kind learns from, and counts, when it knows.

A label is known either with its event (a labelled replay: test, then train on the same
batch) or later, on the ``labels`` feedback input (``event_id, customer_id, is_fraud,
label_ts``; the customer id routes it to the shard that scored the event). A late
label joins the :class:`~runtime.ml.featurelog.FeatureLog` row of its event: the
features, score and alert as they were at scoring time. Every label, early or late,
goes through :func:`learn_from`: the run's prequential counters (precision, recall, AUC
from the *logged* alert and score, so they count only what the model knew then), the
threshold's calibration, the challenger comparison, the error drift test, the model's
training, and the label delay.

``FraudConfig.label_delay_ms`` replays a labelled file as if each label came that long
(event time) after its event: the label is held in the log and released when the
shard's event time passes ``ts + delay``.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from actors.fraud.model import FEATURES, LOG_KIND, pack_arrays, unpack_arrays
from actors.fraud.threshold import auc_counters
from runtime import Batch, Column, EventSchema
from runtime.ml.featurelog import NO_DUE, NO_LABEL, FeatureLog, Joined
from runtime.state.snapshot import reading

LABELS = EventSchema(
    "labels",
    [
        Column("event_id", "int64", min=0),  # the labelled transaction
        Column("customer_id", "string", max_len=128),
        Column("is_fraud", "bool"),
        Column("label_ts", "timestamp", required=False),  # when the label was known
    ],
)

#: the model's rule features, for the per-rule fraud counters
RULE_COLUMNS = {f[5:]: j for j, f in enumerate(FEATURES) if f.startswith("rule_")}
NOT_MODEL = -1  # the logged version of an event the rules scored (no model yet)


def new_log(cfg: object) -> FeatureLog:
    return FeatureLog(
        len(FEATURES),
        capacity=cfg.feature_log_rows,  # type: ignore[attr-defined]
        retention_ms=cfg.label_retention_ms,  # type: ignore[attr-defined]
    )


def on_the_event(
    ids: np.ndarray,
    X: np.ndarray,
    d: object,
    version: int,
    labels: np.ndarray,
    known: np.ndarray,
    merchant: np.ndarray,
) -> Joined:
    """Labels that came with their events, as joined rows (nothing is logged)."""
    # a replay with its labels knows every one: the rows as they are, not a copy of each
    k = slice(None) if known.all() else np.flatnonzero(known)
    n = len(ids) if isinstance(k, slice) else len(k)
    shadow = d.shadow[k] if d.shadow is not None else np.full(n, np.nan)  # type: ignore[attr-defined]
    v = version if d.model_scored else NOT_MODEL  # type: ignore[attr-defined]
    return Joined(
        ids[k], X[k], d.score[k], shadow, d.alert[k],  # type: ignore[attr-defined]
        np.full(n, v, np.int32), labels[k], np.zeros(n, np.int64), merchant[k],
    )  # fmt: skip


def learn_from(batch: Batch, scorer: object, j: Joined, cfg: object) -> None:
    """Everything a known label is for (see the module docstring)."""
    if not len(j):
        return
    y, alert = j.label, j.alert
    if j.tag is not None:  # the merchant each labelled event was at
        scorer.merchants.observe(j.tag, y)  # type: ignore[attr-defined]
    batch.count("labelled", len(j))
    batch.count("true_positives", int((alert & y).sum()))
    batch.count("false_positives", int((alert & ~y).sum()))
    batch.count("false_negatives", int((~alert & y).sum()))
    batch.count("label_delay_ms_sum", float(j.delay_ms.sum()))
    for name, col in RULE_COLUMNS.items():
        batch.count(f"rule:{name}:fraud", int(((j.x[:, col] > 0.5) & y).sum()))
    by_model = j.version != NOT_MODEL  # a rule score is on another scale: not in the AUC
    if by_model.any():
        s, lab = j.score[by_model], y[by_model]
        for key, v in auc_counters(s, lab, np.ones(len(s), bool)).items():
            batch.count(key, v)
        sh = j.shadow[by_model]
        scorer.observe_labels(s, sh, alert[by_model], lab, j.delay_ms[by_model])  # type: ignore[attr-defined]
    if cfg.learn:  # type: ignore[attr-defined]
        # all frauds, and a fixed, id-chosen share of the rest, weighted back up: the
        # model sees the same evidence at a fraction of the partial_fit cost
        with np.errstate(over="ignore"):
            mixed = j.event_id.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        share = cfg.negative_sample  # type: ignore[attr-defined]
        keep_neg = (mixed >> np.uint64(40)) % np.uint64(1000) < share * 1000
        use = y | keep_neg
        weight = np.where(y[use], 1.0, 1.0 / share)
        scorer.learn(np.asarray(j.x[use], np.float64), y[use], weight)  # type: ignore[attr-defined]


def log_stats(batch: Batch, log: FeatureLog, before: dict[str, int]) -> None:
    """The log's changes as run counters: labels that found no event in time, duplicates."""
    now = log.stats()
    for key, name in (
        ("expired", "feature_log_expired"),  # scored events that left it with no label
        ("held_expired", "labels_expired"),  # held labels lost: the log was too small
        ("orphans_expired", "labels_unmatched"),  # labels whose event never came
        ("duplicates", "labels_duplicate"),
    ):
        if now[key] > before.get(key, 0):
            batch.count(name, now[key] - before.get(key, 0))
    # levels, as changes: summed over the run and the shards they are what waits now
    for key, name in (("orphans", "labels_waiting_for_event"), ("held", "labels_held")):
        if now[key] != before.get(key, 0):
            batch.count(name, now[key] - before.get(key, 0))


class LabelDesk:
    """One shard's labels: learned from at once when they come with their events, else
    its scored events logged (:class:`FeatureLog`) until theirs come."""

    def __init__(self, cfg: object, scorer: object) -> None:
        self.cfg, self.scorer = cfg, scorer
        self.log: FeatureLog | None = (
            None  # made on first use: most shards of a labelled replay never need one
        )
        self._since_expire = 0

    def on_events(
        self,
        batch: Batch,
        ev: pa.Table,
        order: np.ndarray,
        t: np.ndarray,
        X: np.ndarray,
        d: object,
        merchant: np.ndarray,
    ) -> None:
        """A scored batch (rows in ``order``; ``merchant``: their merchants' buckets): learn from the labels on it now, or log it
        until its labels come (the feedback input, or held back ``label_delay_ms``)."""
        cfg = self.cfg
        ids = ev.column("event_id").to_numpy()[order]
        known = labels = np.zeros(len(ids), bool)
        if "is_fraud" in ev.column_names:
            lab = ev.column("is_fraud")
            known = ~lab.is_null().to_numpy(zero_copy_only=False)[order]
            labels = lab.fill_null(False).to_numpy(zero_copy_only=False)[order].astype(bool)
        version = self.scorer.model.version if d.model_scored else NOT_MODEL  # type: ignore[attr-defined]
        delay = cfg.label_delay_ms  # type: ignore[attr-defined]
        if known.any() and delay is None:
            now = on_the_event(ids, X, d, version, labels, known, merchant)
            learn_from(batch, self.scorer, now, cfg)
        waiting = np.flatnonzero(np.ones(len(ids), bool) if delay is not None else ~known)
        if not len(waiting) or not cfg.learn:  # type: ignore[attr-defined]
            return
        log, before = self._log()
        held = due = None
        if delay is not None:
            held = np.where(known, labels.astype(np.int8), NO_LABEL)[waiting]
            due = np.where(known, t + int(delay), NO_DUE)[waiting]
        w = waiting
        shadow = d.shadow[w] if d.shadow is not None else None  # type: ignore[attr-defined]
        x = X[w].astype(np.float32)
        score, alert = d.score[w], d.alert[w]  # type: ignore[attr-defined]
        joined = log.add(ids[w], t[w], x, score, alert, version, shadow, held, due, merchant[w])
        learn_from(batch, self.scorer, joined, cfg)
        if delay is not None:
            learn_from(batch, self.scorer, log.release(), cfg)
        self._tidy(batch, log, before)

    def on_labels(self, batch: Batch) -> None:
        """Labels of the feedback input: joined to the logged features of their events
        (or kept until the event comes), then learned from and counted."""
        ev = batch.events
        log, before = self._log()
        # a label without its time was known when it came (the wall clock)
        lts = ev.column("label_ts").cast(pa.int64()).fill_null(int(time.time() * 1000))
        joined = log.label(
            ev.column("event_id").to_numpy(),
            ev.column("is_fraud").to_numpy(zero_copy_only=False).astype(bool),
            lts.to_numpy(),
        )
        learn_from(batch, self.scorer, joined, self.cfg)
        self._tidy(batch, log, before)

    def _log(self) -> tuple[FeatureLog, dict[str, int]]:
        if self.log is None:
            self.log = new_log(self.cfg)
        return self.log, self.log.stats()

    def _tidy(self, batch: Batch, log: FeatureLog, before: dict[str, int]) -> None:
        self._since_expire += 1
        if self._since_expire >= 16:  # a scan of the whole log: not every batch
            log.expire()
            self._since_expire = 0
        log_stats(batch, log, before)

    # -- state, per shard --------------------------------------------------------------------
    def snapshot(self) -> bytes | None:
        return None if self.log is None else pack_arrays(self.log.arrays(), LOG_KIND)

    def restore(self, blob: bytes) -> None:
        """The log as :meth:`snapshot` saved it; anything else is refused
        (:class:`~runtime.errors.SnapshotError`: the start stops), never unpickled."""
        arrays = unpack_arrays(blob, LOG_KIND)
        with reading(LOG_KIND, "the saved feature log of customers"):
            log, _ = self._log()
            log.load(arrays)
