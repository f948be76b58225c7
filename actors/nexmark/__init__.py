"""The NEXMark benchmark: an online auction's stream and the standard queries over it.

``generator`` builds the standard NEXMark stream of persons, auctions and bids
(vectorized, with its settings and schemas in ``config`` and its strings in
``strings``); ``stream`` merges them into the one stream the queries read, and
``source`` generates that stream while a query reads it; ``queries`` runs Q0-Q5, Q7
and Q8 as pipelines on the runtime, each publishing its answer to the topic named
after it. :data:`QUERIES` maps a query's name
to the function that builds its pipeline (Q4's kinds are in ``winners``).
"""

from actors.nexmark.queries import QUERIES

__all__ = ["QUERIES"]
