"""Scoring a batch: rule signals feed the model, the model decides, a calibrated threshold alerts.

:class:`Scorer` is what a customer shard and the one-process baseline both use, so they
decide alike: the rule signals (:func:`rule_hits`) become features, the online model
(:class:`~actors.fraud.model.OnlineModel`) scores every event, and the
:class:`~actors.fraud.threshold.Calibrator` sets the alert threshold from the live score
distribution to meet a precision target (or an alert budget until enough labels are
known). Before the model has learned from both classes, the rules' combined evidence
scores instead (a cold start alerts on something). Reasons are the features that pushed
each alert's score up most, as a list, so ``GROUP BY`` over them is meaningful.

Its state travels as arrays and JSON (:meth:`Scorer.to_bytes`), never as a pickle: a
data folder anyone can write must not be able to run code in the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from actors.fraud.model import OnlineModel, pack_arrays, unpack_arrays
from actors.fraud.threshold import Calibrator


def rule_hits(
    cfg: object,
    n_prev: np.ndarray,
    amt: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    burst: np.ndarray,
    dist: np.ndarray,
    new_device: np.ndarray,
) -> dict[str, np.ndarray]:
    """The classic fraud rules, as booleans per event (features of the model)."""
    return {
        "high_amount": (n_prev >= 5) & (amt > mean + 5 * std) & (amt > 5 * mean),
        "burst": burst >= cfg.burst_count,  # type: ignore[attr-defined]
        "far_location": (n_prev >= 3) & (dist > cfg.far_km),  # type: ignore[attr-defined]
        "new_device_high_amount": new_device & (n_prev >= 3) & (amt > 3 * mean),
    }


@dataclass
class Decision:
    """One batch's scores and alerts, and the threshold that made them."""

    score: np.ndarray
    alert: np.ndarray
    threshold: float
    model_scored: bool  # False: the model had not learned yet, the rules scored


class Scorer:
    """The model, the threshold calibrator and the scoring settings of one replica."""

    def __init__(self, cfg: object) -> None:
        self.cfg = cfg
        self.model = OnlineModel()
        self.calibrator = Calibrator(half_life=cfg.calibration_half_life)  # type: ignore[attr-defined]

    def threshold(self) -> float:
        cfg = self.cfg
        if cfg.threshold is not None:  # type: ignore[attr-defined]
            return float(cfg.threshold)  # type: ignore[attr-defined]
        return self.calibrator.threshold(cfg.target_precision, cfg.alert_budget)  # type: ignore[attr-defined]

    def decide(self, X: np.ndarray, rules: dict[str, np.ndarray]) -> Decision:
        """Score and alert a batch (with the threshold as it was before the batch)."""
        th = self.threshold()
        if self.model.fitted:
            score = self.model.score(X)
            return Decision(score, score >= th, th, True)
        keep = np.ones(len(X))  # cold start: the rules' evidence, 1 - prod(1 - w)
        for name, hit in rules.items():
            keep *= np.where(hit, 1.0 - self.cfg.weights[name], 1.0)  # type: ignore[attr-defined]
        score = 1.0 - keep
        fixed = self.cfg.threshold  # type: ignore[attr-defined]
        return Decision(score, score >= (0.5 if fixed is None else fixed), th, False)

    def observe(self, d: Decision, labels: np.ndarray | None, known: np.ndarray | None) -> None:
        """What the calibrator learns from a scored batch: model scores only (a rule score
        is on another scale), and the labels known (prequential: after deciding)."""
        if d.model_scored:
            self.calibrator.observe(d.score, labels, known)

    def reasons(
        self, X: np.ndarray, rules: dict[str, np.ndarray], rows: np.ndarray, d: Decision
    ) -> list[list[str]]:
        """Why each of ``rows`` alerted: its top contributing features (or its rules)."""
        if d.model_scored:
            return self.model.explain(X[rows])
        return [[f"rule_{n}" for n, hit in rules.items() if hit[i]] for i in rows.tolist()]

    # -- state: arrays and JSON -----------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return pack_arrays({**self.model.arrays(), **self.calibrator.arrays()})

    def load(self, blob: bytes) -> None:
        arrays = unpack_arrays(blob)
        self.model = OnlineModel.from_arrays(arrays)
        self.calibrator.load(arrays)

    @staticmethod
    def merge(blobs: list[bytes]) -> bytes:
        parts = [unpack_arrays(b) for b in blobs]
        return pack_arrays({**OnlineModel.average_arrays(parts), **Calibrator.merged(parts)})
