"""Card-fraud detection: card transactions in, a profile per customer and alerts out.

Each transaction is validated, deduplicated and scored against its customer's profile
as it was just before it (rules and an online model, test-then-train); alerts land in
the ``alerts`` table. Modules: ``customer`` (the entity kind), ``features`` (what it
computes per event), ``model`` (the online model its shards share), ``generator`` (a
synthetic card stream) and ``app`` (the app and its pipeline).
"""

from actors.fraud.app import fraud_app

__all__ = ["fraud_app"]
