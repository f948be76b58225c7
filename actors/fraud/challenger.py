"""Drift, and a challenger that answers it: a model trained only on what came after.

The scorer's :class:`~runtime.ml.monitor.DriftMonitor` watches the score distribution
and two key features (PSI against a reference window) and the prequential error
(Page-Hinkley). A detected drift is published on the ``drift`` topic and starts a
challenger: a fresh model that learns from the same labels as the champion from then on
and scores every event in shadow. Both are ranked on the labels that arrive afterwards
(binned AUC, the same events for both); when the challenger is better by a margin over
enough frauds (a one-sided test on the AUC difference, :func:`auc_se`), the next merge of the replicas promotes it (the model version goes up,
the threshold's calibration starts over on the new scores).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from actors.fraud.model import OnlineModel
from actors.fraud.threshold import AUC_BINS, Calibrator, auc_counters, auc_from
from runtime.ml.monitor import DriftMonitor

#: events a model scores before drift is watched: a young model's scores still move
WARM_UP = 200_000
MIN_FRAUDS = 100  # labelled frauds both models scored before a promotion is considered
#: the step-size clock a challenger restarts from (eta0 / sqrt(t): ~15x the champion's floor)
RESTART_T = 1_000.0
#: one-sided z the challenger's AUC gain must reach (5 % significance), with the
#: Hanley-McNeil standard errors taken as independent: conservative for paired scores
Z_PROMOTE = 1.645


def auc_se(auc: float, n_pos: float, n_neg: float) -> float:
    """Hanley & McNeil's (1982) standard error of a ROC AUC from ``n_pos`` / ``n_neg`` cases.

    >>> round(auc_se(0.9, 100, 10_000), 4)
    0.0207
    """
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)
    return float(np.sqrt(max(var, 0.0) / max(n_pos * n_neg, 1.0)))


def new_monitor() -> DriftMonitor:
    # 0/1 errors at a base rate of a few per thousand: a small delta, a matching threshold.
    # PSI 0.6 on scores: an online model moves its own score distribution (merchant risk
    # fills in as labels come); 0.3 raised one false alarm on each of two streams without
    # drift (demo, seed 11: PSI 0.49), 0.6 none; the injected drifts are found by the
    # error test first
    return DriftMonitor(
        psi_threshold=0.6,
        cooldown=200_000,
        psi={"reference_size": 50_000, "half_life": 20_000},
        page_hinkley={"delta": 0.001, "threshold": 25.0},
    )


def monitor_arrays(m: DriftMonitor) -> dict[str, np.ndarray]:
    return {f"dm:{k}": np.asarray(v) for k, v in m.state().items()}


def monitor_from(arrays: dict[str, np.ndarray]) -> DriftMonitor | None:
    state = {k[3:]: v for k, v in arrays.items() if k.startswith("dm:")}
    if not state:
        return None
    return DriftMonitor.from_state({k: v.item() if v.ndim == 0 else v for k, v in state.items()})


def _unprefixed(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """``sh_cal_base`` -> ``cal_base``: the challenger's calibrator as a Calibrator reads it."""
    return {k[3:]: v for k, v in arrays.items() if k.startswith(prefix)}


class Shadow:
    """The challenger and the two models' binned AUC on the labels since it started."""

    def __init__(self) -> None:
        self.model: OnlineModel | None = None
        self.base = np.zeros((4, AUC_BINS))  # champion +, champion -, challenger +, challenger -
        self.delta = np.zeros((4, AUC_BINS))
        #: the challenger's own threshold calibration: promoted, it alerts well at once
        self.calibrator = Calibrator()

    def start(self, champion: OnlineModel | None = None) -> None:
        """A challenger from the champion's weights with its step size large again (it
        adapts to what changed in thousands of labels, not hundreds of thousands, and
        keeps what did not change), or a fresh model if the champion has not learned."""
        if champion is not None and champion.fitted:
            self.model = OnlineModel.from_arrays(champion.arrays())
            self.model.clf.t_ = RESTART_T
            self.model.learned_total = self.model.learned_since_sync = 0
        else:
            self.model = OnlineModel()
        self.base[:] = 0
        self.delta[:] = 0
        self.calibrator = Calibrator()

    def observe(
        self, champion: np.ndarray, challenger: np.ndarray, labels: np.ndarray, known: np.ndarray
    ) -> None:
        """Both models' scores of the same labelled events (prequential)."""
        if not known.any():
            return
        self.calibrator.observe_labels(challenger[known], labels[known])
        for row, scores in ((0, champion), (2, challenger)):
            for key, v in auc_counters(scores, labels, known).items():
                self.delta[row + (key[3] == "-"), int(key[5:])] += v

    def aucs(self) -> tuple[float | None, float | None, int]:
        h = self.base + self.delta
        return auc_from(h[0], h[1]), auc_from(h[2], h[3]), int(h[2].sum())

    def comparison(self) -> dict[str, float | None] | None:
        """The two models on the same labels since the challenger started: their AUCs, the
        labelled frauds, and the z of the challenger's gain; None without a challenger."""
        if self.model is None:
            return None
        champ, chall, frauds = self.aucs()
        h = self.base + self.delta
        z = None
        if champ is not None and chall is not None:
            n_pos, n_neg = h[2].sum(), h[3].sum()
            se = np.hypot(auc_se(champ, n_pos, n_neg), auc_se(chall, n_pos, n_neg))
            z = (chall - champ) / se if se > 0 else 0.0
        return {
            "champion_auc": None if champ is None else round(champ, 4),
            "challenger_auc": None if chall is None else round(chall, 4),
            "labelled_frauds": frauds,
            "z": None if z is None else round(float(z), 2),
        }

    def better(self) -> bool:
        """Promote: enough labelled frauds, and an AUC gain significant at 5 %."""
        c = self.comparison()
        return (
            c is not None
            and c["z"] is not None
            and c["labelled_frauds"] >= MIN_FRAUDS  # type: ignore[operator]
            and c["z"] >= Z_PROMOTE
        )

    # -- state -------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, Any] = {"sh_base": self.base, "sh_delta": self.delta}
        out.update({f"sh_{k}": v for k, v in self.calibrator.arrays().items()})
        if self.model is not None:
            out.update({f"sh_{k}": v for k, v in self.model.arrays().items()})
        return out

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        self.base = np.array(arrays.get("sh_base", np.zeros((4, AUC_BINS))), dtype=np.float64)
        self.delta = np.array(arrays.get("sh_delta", np.zeros((4, AUC_BINS))), dtype=np.float64)
        self.calibrator = Calibrator()
        if "sh_cal_base" in arrays:
            self.calibrator.load(_unprefixed(arrays, "sh_cal"))
        model = {
            k[3:]: v
            for k, v in arrays.items()
            if k.startswith("sh_") and k[3:] in ("meta", "coef", "intercept")
        }
        self.model = OnlineModel.from_arrays(model) if model else None

    @staticmethod
    def merged(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Challengers averaged (those replicas that have one), comparisons summed."""
        with_model = [p for p in parts if "sh_meta" in p]
        base = np.asarray(parts[0].get("sh_base", np.zeros((4, AUC_BINS))), dtype=np.float64)
        new = sum(
            np.asarray(p.get("sh_delta", np.zeros((4, AUC_BINS))), dtype=np.float64) for p in parts
        )
        out: dict[str, Any] = {"sh_base": base + new, "sh_delta": np.zeros_like(base)}
        cals = [_unprefixed(p, "sh_cal") for p in parts if "sh_cal_base" in p]
        if cals:
            out.update({f"sh_{k}": v for k, v in Calibrator.merged(cals).items()})
        if with_model:
            models = [
                {k[3:]: v for k, v in p.items() if k[3:] in ("meta", "coef", "intercept")}
                for p in with_model
            ]
            out.update({f"sh_{k}": v for k, v in OnlineModel.average_arrays(models).items()})
        return out
