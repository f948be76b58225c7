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

from actors.fraud.challenger import WARM_UP, Shadow, monitor_arrays, monitor_from, new_monitor
from actors.fraud.merchants import MerchantRisk
from actors.fraud.model import OnlineModel, pack_arrays, unpack_arrays
from actors.fraud.threshold import Calibrator
from runtime.errors import SnapshotError
from runtime.ml.drift import PSI


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
    shadow: np.ndarray | None = None  # the challenger's scores of the same events


class Scorer:
    """The model, the threshold calibrator and the scoring settings of one replica."""

    def __init__(self, cfg: object) -> None:
        self.cfg = cfg
        self.model = OnlineModel()
        self.calibrator = Calibrator(half_life=cfg.calibration_half_life)  # type: ignore[attr-defined]
        self.monitor = new_monitor()
        self.shadow = Shadow()
        self.merchants = MerchantRisk()  # labelled fraud per merchant: a feature
        self.scored = 0  # events the model scored (drift is watched after a warm-up)
        #: drift events not published yet (the kind emits them on the ``drift`` topic)
        self.drifts: list[dict] = []

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
            ch = self.shadow.model
            shadow = ch.score(X) if ch is not None and ch.fitted else None
            return Decision(score, score >= th, th, True, shadow)
        keep = np.ones(len(X))  # cold start: the rules' evidence, 1 - prod(1 - w)
        for name, hit in rules.items():
            keep *= np.where(hit, 1.0 - self.cfg.weights[name], 1.0)  # type: ignore[attr-defined]
        score = 1.0 - keep
        fixed = self.cfg.threshold  # type: ignore[attr-defined]
        return Decision(score, score >= (0.5 if fixed is None else fixed), th, False)

    def observe_scores(self, d: Decision) -> None:
        """What the calibrator and the score drift test learn from a scored batch: model
        scores only (a rule score is on another scale)."""
        if not d.model_scored:
            return
        self.calibrator.observe(d.score, None, None)
        if d.shadow is not None and self.shadow.model is not None:
            self.shadow.calibrator.observe(d.shadow, None, None)
        self.scored += len(d.score)
        if self.scored > WARM_UP:
            self._drifted(self.monitor.update(d.score, None, None, at=self.scored))

    def observe_labels(
        self,
        score: np.ndarray,
        shadow: np.ndarray,
        alert: np.ndarray,
        labels: np.ndarray,
        delay_ms: np.ndarray | None = None,
    ) -> None:
        """Labels now known, with the scores, challenger scores (NaN: none) and alerts the
        models gave their events when they scored them (prequential, whenever they come)."""
        self.calibrator.observe_labels(score, labels, delay_ms)
        both = ~np.isnan(shadow)
        if both.any() and self.shadow.model is not None:
            self.shadow.observe(score[both], shadow[both], labels[both], np.ones(both.sum(), bool))
        if self.scored > WARM_UP:
            errors = (alert != labels).astype(np.float64)
            self._drifted(self.monitor.update(np.zeros(0), None, errors, at=self.scored))

    def _drifted(self, found: list[dict]) -> None:
        if found:
            self.drifts += found
            if self.shadow.model is None:  # a drift starts a challenger on what comes next
                self.shadow.start(self.model)

    def learn(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray) -> None:
        """The champion and the challenger (if any) learn from the same labels."""
        self.model.learn(X, y, weight)
        if self.shadow.model is not None:
            self.shadow.model.learn(X, y, weight)

    def reasons(
        self, X: np.ndarray, rules: dict[str, np.ndarray], rows: np.ndarray, d: Decision
    ) -> list[list[str]]:
        """Why each of ``rows`` alerted: its top contributing features (or its rules)."""
        if d.model_scored:
            return self.model.explain(X[rows])
        return [[f"rule_{n}" for n, hit in rules.items() if hit[i]] for i in rows.tolist()]

    # -- state: arrays and JSON -----------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return pack_arrays(
            {
                **self.model.arrays(),
                **self.calibrator.arrays(),
                **self.shadow.arrays(),
                **self.merchants.arrays(),
                **monitor_arrays(self.monitor),
                "scored": np.asarray(self.scored),
                "watched_version": np.asarray(self.model.version),
            }
        )

    def load(self, blob: bytes) -> None:
        arrays = unpack_arrays(blob)
        self.model = OnlineModel.from_arrays(arrays)
        self.calibrator.load(arrays)
        self.shadow.load(arrays)
        self.merchants.load(arrays)
        self.monitor = monitor_from(arrays) or new_monitor()
        self.scored = int(arrays.get("scored", np.asarray(0)))
        watched = int(arrays.get("watched_version", np.asarray(self.model.version)))
        if watched != self.model.version:
            # a new model scores on its own scale: its scores are compared with its own
            # (the error test goes on: a better model only lowers the error)
            self.monitor.score = PSI(edges=None, **self.monitor.psi_kwargs)

    @staticmethod
    def merge(blobs: list[bytes]) -> bytes:
        """Replicas as one: models averaged, calibration and comparisons summed, the first
        replica's drift monitor kept; a challenger that beat the champion is promoted."""
        parts = [unpack_arrays(b) for b in blobs]
        merged = {
            **parts[0],
            **OnlineModel.average_arrays(parts),
            **Calibrator.merged(parts),
            **Shadow.merged(parts),
            **MerchantRisk.merged(parts),
            "scored": np.asarray(max(int(p.get("scored", np.asarray(0))) for p in parts)),
        }
        shadow = Shadow()
        shadow.load(merged)
        if shadow.better() and shadow.model is not None:
            champion = OnlineModel.from_arrays(merged)
            shadow.model.version = champion.version + 1
            shadow.model.learned_total += champion.learned_total
            merged.update(shadow.model.arrays())  # the challenger serves from now on
            # its threshold is the one calibrated on its own scores in shadow
            merged.update({k[3:]: v for k, v in merged.items() if k.startswith("sh_cal")})
            merged = {k: v for k, v in merged.items() if not k.startswith("sh_")}
        return pack_arrays(merged)

    @staticmethod
    def card(snapshot: bytes, cfg: object) -> dict:
        """What the model registry records of a snapshot: read from its JSON meta (the npz
        is opened with pickles refused); ValueError for anything that is not one."""
        import json

        try:
            arrays = unpack_arrays(snapshot)
            meta = json.loads(bytes(arrays["meta"]).decode())
            version, total = int(meta["version"]), int(meta["learned_total"])
            scorer = Scorer(cfg)
            scorer.calibrator.load(arrays)
            scorer.shadow.load(arrays)
            # the live estimate: decayed labelled scores, at the threshold the model alerts at
            quality = scorer.calibrator.metrics(scorer.threshold())
            challenger = scorer.shadow.comparison()
        except SnapshotError:
            raise  # says what it is and where
        except Exception as err:  # a zip, npy or JSON error: all mean "not a model snapshot"
            raise ValueError(f"not a customers model snapshot ({type(err).__name__})") from err
        params = ("features", "eta0", "alpha", "fraud_weight", "learn_rows", "max_t")
        return {
            "version": version,
            "parent": None,
            "training_rows": total,
            "metrics": {
                "fitted": bool(meta.get("fitted")),
                "threshold": round(scorer.threshold(), 4),
                **quality,
                **({"challenger": challenger} if challenger is not None else {}),
            },
            "parameters": {k: meta[k] for k in params if k in meta},
        }
