"""Cart recommendations: shopping events in; a taste and a cart per customer, offers out.

Each customer's views, cart adds and purchases update a taste vector, their recent
products and their open cart; each shard learns what is carted after what in a sliding
window. Every cart add publishes offers to the ``offers`` topic, and ``recommend``
answers on demand (``GET /v1/recommend?customer=C&k=10`` on ``edgecore serve``). Modules:
``catalog`` and ``generator`` (a synthetic commerce world), ``products`` (the catalog in
LanceDB and in memory), ``shopper`` (the ``Customer`` entity kind), ``cooccur``,
``rings`` and ``ranker`` (what it learns and how it ranks), ``evaluate`` (hit-rate against
baselines) and ``app``.
"""

from actors.recommend.app import recommend

__all__ = ["recommend"]
