"""The NEXMark benchmark: an online auction's stream and the standard queries over it.

``generator`` builds the standard NEXMark stream of persons, auctions and bids
(vectorized, with its settings and schemas in ``config`` and its strings in
``strings``); ``queries`` runs Q0-Q5, Q7 and Q8 as pipelines on the runtime, each
publishing its answer to the topic named after it. :data:`QUERIES` maps a query's name
to the function that builds its pipeline.
"""

from actors.nexmark.queries import QUERIES

__all__ = ["QUERIES"]
