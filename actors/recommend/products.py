"""The catalog as the recommend app serves it: in memory, loaded from its LanceDB table.

The table of record is ``catalog`` in the data folder (``product_id``, ``category``,
``price``, ``stock``, ``embedding``), written once by :func:`write_catalog_table` with
LanceDB's own vector index (IVF_PQ) and scalar indexes, so SQL and ad-hoc vector search
work on it (``edgecore sql``, :class:`~runtime.state.vectors.VectorTable`). A LanceDB query
costs tens of milliseconds at a million products, too slow for an offer while the customer
shops, so each shard holds the catalog in memory: ids hashed to rows, stock and category
as numpy columns, the vectors in a :class:`~runtime.state.ann.MemoryIndex` (memory first,
LanceDB behind).

>>> import tempfile
>>> from runtime.state.store import Store
>>> from actors.recommend.catalog import CommerceConfig, catalog_table
>>> store = Store(tempfile.mkdtemp())
>>> write_catalog_table(store, catalog_table(CommerceConfig(n_products=3_000, n_themes=30, dim=16)))
3000
>>> products = Products.load(store)
>>> len(products), products.rows(pa.array(["p7", "nope", "p0"])).tolist()
(3000, [7, -1, 0])
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runtime.errors import ConfigError
from runtime.state.ann import MemoryIndex
from runtime.state.keys import hash_keys
from runtime.state.store import Store
from runtime.state.vectors import VectorTable

CATALOG_TABLE = "catalog"
CATALOG_COLUMNS = ("product_id", "category", "price", "stock", "embedding")


def write_catalog_table(store: Store, catalog: pa.Table, name: str = CATALOG_TABLE) -> int:
    """Write ``catalog`` as the table ``name`` with a vector index and scalar indexes on
    ``category`` and ``stock``; returns its rows. Overwrites an existing table."""
    missing = [c for c in CATALOG_COLUMNS if c not in catalog.column_names]
    if missing:
        raise ConfigError(f"a catalog needs the columns {list(CATALOG_COLUMNS)}; missing {missing}")
    table = VectorTable(store, name, key="product_id")
    table.write(catalog.select(list(CATALOG_COLUMNS)), mode="overwrite")
    table.build_index(filters=["category", "stock"])
    return catalog.num_rows


class Products:
    """The catalog in memory: ``ids``, ``category`` codes (into ``categories``), ``price``,
    ``stock`` and the vector ``index``; :meth:`rows` maps product ids to rows."""

    def __init__(self, catalog: pa.Table, nprobe: int = 8, seed: int = 0) -> None:
        if catalog.num_rows == 0:
            raise ConfigError("the catalog is empty: write products before serving offers")
        self.ids = catalog.column("product_id").combine_chunks()
        cats = pc.dictionary_encode(catalog.column("category")).combine_chunks()
        self.categories = cats.dictionary
        self.category = cats.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        self.price = catalog.column("price").to_numpy().astype(np.float64)
        self.stock = catalog.column("stock").to_numpy().astype(np.int64)
        emb = catalog.column("embedding").combine_chunks()
        dim = emb.type.list_size
        vectors = emb.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
        self.index = MemoryIndex(vectors, nprobe=nprobe, seed=seed)
        self.index.set_allowed(self.stock > 0)
        h = hash_keys(self.ids)
        self._by_hash = np.argsort(h, kind="stable")
        self._hashes = h[self._by_hash]

    @classmethod
    def load(cls, store: Store, name: str = CATALOG_TABLE, nprobe: int = 8) -> Products:
        """The catalog table ``name`` of ``store``, read once into memory."""
        if not store.exists(name):
            raise ConfigError(
                f"no {name!r} table in {store.path}: write the catalog first "
                "(actors.recommend.products.write_catalog_table)"
            )
        return cls(store.read(name, columns=list(CATALOG_COLUMNS)), nprobe=nprobe)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.index.dim

    def rows(self, product_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """The row of each product id; -1 for one the catalog does not have."""
        return self.rows_of_hash(hash_keys(product_ids))

    def rows_of_hash(self, h: np.ndarray) -> np.ndarray:
        """The row of each product-id hash (:func:`~runtime.state.keys.hash_keys`, as
        uint64 or its int64 view); -1 for one the catalog does not have."""
        h = np.asarray(h).view(np.uint64)
        at = np.minimum(np.searchsorted(self._hashes, h), len(self._hashes) - 1)
        found = self._hashes[at] == h
        return np.where(found, self._by_hash[at], -1)

    def in_stock(self, rows: np.ndarray) -> np.ndarray:
        return self.stock[rows] > 0
