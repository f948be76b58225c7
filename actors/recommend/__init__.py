"""Recommendation: a synthetic commerce world (catalog, customers, sessions) to learn and
evaluate next-purchase recommenders on; the app itself is yet to come."""
