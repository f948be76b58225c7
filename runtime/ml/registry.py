"""The model registry: every version of a kind's model, which one serves, and its history.

A kind whose snapshot is a model (its :meth:`~runtime.entities.kind.EntityKind.model_card`
describes a snapshot) has each version registered at the checkpoint that commits it, in
the data folder's ``models`` table: the kind's snapshot as bytes (in the kind's own safe
format; the registry never deserializes it) with a card of what it learned from. The
first version of a kind is its ``champion``; later ones are ``challenger``\\ s until an
operator promotes one (``edgecore model promote``). The champion an operator chose
(promoted, or rolled back to) is *pinned*: the next start of the runtime serves it
instead of the last checkpoint's snapshot, and the pin is released once a checkpoint
commits a model grown from it.

>>> import tempfile
>>> from runtime.state.store import Store
>>> reg = ModelRegistry(Store(tempfile.mkdtemp()))
>>> card = {"training_rows": 100, "metrics": {"ap": 0.5}, "parameters": {"eta0": 0.2}}
>>> reg.register("customers", 1, b"v1 bytes", card)
True
>>> reg.register("customers", 2, b"v2 bytes", {**card, "training_rows": 200})
True
>>> reg.register("customers", 2, b"v2 bytes", card)   # idempotent per (kind, version)
False
>>> [(m["version"], m["status"], m["parent"]) for m in reg.list("customers")]
[(1, 'champion', None), (2, 'challenger', 1)]
>>> reg.promote("customers", 2)["retired"]
1
>>> reg.champion("customers")
(2, b'v2 bytes')
>>> reg.rollback("customers")["champion"]
1
>>> reg.pinned("customers")                           # the next start serves version 1
(1, b'v1 bytes')
>>> reg.show("customers", 9)
Traceback (most recent call last):
...
runtime.ml.registry.RegistryError: kind 'customers' has no model version 9 (versions 1..2)
"""

from __future__ import annotations

import json
import time
import warnings
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from runtime.errors import EdgecoreError

if TYPE_CHECKING:
    from runtime.entities.kind import EntityKind
    from runtime.state.store import Store

MODELS = "models"
CHAMPION, CHALLENGER, RETIRED = "champion", "challenger", "retired"
SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("version", pa.int64()),
        ("created_at", pa.timestamp("ms")),
        ("parent", pa.int64()),
        ("training_rows", pa.int64()),
        ("metrics", pa.string()),
        ("parameters", pa.string()),
        ("status", pa.string()),
        #: when it last became champion (null: never, or rolled back from)
        ("promoted_at", pa.timestamp("ms")),
        #: an operator made it champion: the next start serves it
        ("pinned", pa.bool_()),
        ("blob", pa.binary()),
    ]
)
CARD_COLUMNS = [f.name for f in SCHEMA if f.name != "blob"]
#: a row per model per checkpoint: how the serving version does over time
METRICS = "model_metrics"
METRIC_COLUMNS = ("auc", "precision", "recall", "threshold")
METRICS_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("version", pa.int64()),
        ("at", pa.timestamp("ms")),
        ("training_rows", pa.int64()),
        *[(c, pa.float64()) for c in METRIC_COLUMNS],
        ("metrics", pa.string()),  # all of the card's metrics, as JSON
    ]
)


class RegistryError(EdgecoreError, LookupError):
    """No such model, kind or registry in the data folder."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _json(text: Any) -> Any:
    """A JSON column as data; what is not JSON (a row written by hand) stays as text."""
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text


class ModelRegistry:
    """The ``models`` table of a data folder (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- reading ------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.store.exists(MODELS)

    def _rows(self, kind: str | None, blob: bool = False) -> list[dict[str, Any]]:
        """The rows of ``kind`` (all kinds: None) by version; filtered in Arrow, never in
        SQL, so a kind name typed by a user is only ever compared."""
        if not self.exists():
            return []
        columns = None if blob else [c for c in CARD_COLUMNS if c in self._columns()]
        table = self.store.read(MODELS, columns=columns)
        if kind is not None:
            table = table.filter(pc.equal(table.column("kind"), kind))
        return sorted(table.to_pylist(), key=lambda r: (r["kind"], r["version"]))

    def _columns(self) -> list[str]:
        return list(self.store.table(MODELS).schema.names)

    def kinds(self) -> list[str]:
        """The kinds that have models."""
        return sorted({r["kind"] for r in self._rows(None)})

    def list(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every version's card (no blob), by kind and version."""
        return [self._card(r) for r in self._rows(kind)]

    def show(self, kind: str, version: int) -> dict[str, Any]:
        """One version's card (no blob)."""
        return self._card(self._find(self._rows(kind), kind, version))

    def champion(self, kind: str) -> tuple[int, bytes] | None:
        """The version that serves ``kind`` and its snapshot, if it has models."""
        row = self._champion_row(self._rows(kind, blob=True))
        return (row["version"], row["blob"]) if row is not None else None

    def pinned(self, kind: str) -> tuple[int, bytes] | None:
        """The champion an operator chose (promoted or rolled back to), while the runtime
        has not yet committed a model grown from it."""
        row = self._champion_row(self._rows(kind, blob=True))
        return (row["version"], row["blob"]) if row is not None and row["pinned"] else None

    # -- writing ------------------------------------------------------------------------------
    def register(self, kind: str, version: int, blob: bytes, card: dict[str, Any]) -> bool:
        """Add ``version`` of ``kind``'s model (its snapshot ``blob`` as it is); False if that
        version is registered already. It is the champion if ``kind`` has none yet."""
        rows = self._rows(kind)
        if any(r["version"] == version for r in rows):
            return False
        parent = card.get("parent")
        if parent is None:  # the latest version before it
            parent = max((r["version"] for r in rows if r["version"] < version), default=None)
        first = self._champion_row(rows) is None
        now = _now_ms()
        self._write(
            [
                {
                    "kind": kind,
                    "version": int(version),
                    "created_at": now,
                    "parent": parent,
                    "training_rows": int(card.get("training_rows") or 0),
                    "metrics": json.dumps(card.get("metrics") or {}),
                    "parameters": json.dumps(card.get("parameters") or {}),
                    "status": CHAMPION if first else CHALLENGER,
                    "promoted_at": now if first else None,
                    "pinned": False,
                    "blob": bytes(blob),
                }
            ]
        )
        return True

    def promote(self, kind: str, version: int) -> dict[str, Any]:
        """Make ``version`` the champion (the previous one retired); the next start serves it."""
        rows = self._rows(kind, blob=True)
        target = self._find(rows, kind, version)
        old = self._champion_row(rows)
        changed = [] if old is None or old is target else [{**old, "status": RETIRED}]
        changed.append({**target, "status": CHAMPION, "promoted_at": _now_ms(), "pinned": True})
        self._write(changed)
        retired = None if old is None or old is target else old["version"]
        return {"kind": kind, "champion": version, "retired": retired}

    def rollback(self, kind: str) -> dict[str, Any]:
        """Bring back the champion before the current one; the current one is retired and is
        no rollback target any more (rollbacks go back one champion at a time)."""
        rows = self._rows(kind, blob=True)
        if not rows:
            self._no_models(kind)
        current = self._champion_row(rows)
        earlier = [
            r
            for r in rows
            if r is not current and r["status"] == RETIRED and r["promoted_at"] is not None
        ]
        if current is None or not earlier:
            raise RegistryError(f"kind {kind!r} has no earlier champion to roll back to")
        back = max(earlier, key=lambda r: r["promoted_at"])
        self._write(
            [
                {**current, "status": RETIRED, "promoted_at": None, "pinned": False},
                {**back, "status": CHAMPION, "promoted_at": _now_ms(), "pinned": True},
            ]
        )
        return {"kind": kind, "champion": back["version"], "retired": current["version"]}

    def unpin(self, kind: str) -> None:
        """The runtime committed a model grown from the pinned champion: later starts go on
        from the last checkpoint again."""
        rows = [r for r in self._rows(kind, blob=True) if r["pinned"]]
        if rows:
            self._write([{**r, "pinned": False} for r in rows])

    # -- what the checkpointer calls ------------------------------------------------------------
    def committed(self, kind: str, blob: bytes, card: dict[str, Any]) -> None:
        """A checkpoint committed ``blob`` as ``kind``'s snapshot: register its version and
        add its live metrics to the ``model_metrics`` history."""
        self.register(kind, int(card["version"]), blob, card)
        metrics = card.get("metrics") or {}

        def number(key: str) -> float | None:
            v = metrics.get(key)
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

        row = {
            "kind": kind,
            "version": int(card["version"]),
            "at": _now_ms(),
            "training_rows": card.get("training_rows"),
            **{c: number(c) for c in METRIC_COLUMNS},
            "metrics": json.dumps(metrics, default=str),
        }
        self.store.append(METRICS, pa.Table.from_pylist([row], schema=METRICS_SCHEMA))

    def history(self, kind: str | None = None, last: int | None = None) -> list[dict[str, Any]]:
        """The ``model_metrics`` rows (oldest first), of ``kind`` if given, the ``last`` ones."""
        if not self.store.exists(METRICS):
            return []
        table = self.store.read(METRICS)
        if kind is not None:
            table = table.filter(pc.equal(table["kind"], kind))
        rows = sorted(table.to_pylist(), key=lambda r: r["at"])
        for r in rows:
            r["metrics"] = _json(r["metrics"])
        return rows[-last:] if last else rows

    def start_from(self, kind: str, kind_cls: type[EntityKind] | None) -> bytes | None:
        """The pinned champion's snapshot for ``kind`` to start from, if an operator chose one
        and the kind can read it (checked with its model card, never by running it); an
        unreadable one is warned about and skipped (the kind starts from its checkpoint)."""
        try:
            pinned = self.pinned(kind)
        except Exception as err:  # a models table that cannot be read must not stop a start
            warnings.warn(f"models: cannot read the model registry ({err})", stacklevel=2)
            return None
        if pinned is None:
            return None
        version, blob = pinned
        if kind_cls is not None:
            try:
                ok = kind_cls(None).model_card(blob) is not None
            except Exception as err:
                ok, why = False, f"{type(err).__name__}: {err}"
            else:
                why = "no model card"
            if not ok:
                warnings.warn(
                    f"models: {kind} version {version} is not a readable model ({why}); "
                    "starting from the last checkpoint",
                    stacklevel=2,
                )
                return None
        return blob

    # -- helpers ------------------------------------------------------------------------------
    def _write(self, rows: list[dict[str, Any]]) -> None:
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        self.store.upsert(MODELS, table, key=("kind", "version"))

    @staticmethod
    def _champion_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        champions = [r for r in rows if r["status"] == CHAMPION]
        return max(champions, key=lambda r: r["version"]) if champions else None

    def _no_models(self, kind: str) -> None:
        kinds = self.kinds()
        if not self.exists():
            raise RegistryError(f"no models in {self.store.path}: there is no models table")
        raise RegistryError(f"kind {kind!r} has no models (kinds with models: {', '.join(kinds)})")

    def _find(self, rows: list[dict[str, Any]], kind: str, version: int) -> dict[str, Any]:
        if not rows:
            self._no_models(kind)
        for r in rows:
            if r["version"] == version:
                return r
        have = f"{rows[0]['version']}..{rows[-1]['version']}"
        raise RegistryError(f"kind {kind!r} has no model version {version} (versions {have})")

    @staticmethod
    def _card(row: dict[str, Any]) -> dict[str, Any]:
        card = {k: row.get(k) for k in CARD_COLUMNS}
        card["metrics"], card["parameters"] = _json(card["metrics"]), _json(card["parameters"])
        return card
