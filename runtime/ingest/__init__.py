"""Events arriving live or per site: the gate that validates, deduplicates, logs and
acknowledges (``gate``, ``wal``, ``decode``), its HTTP and MQTT front ends (``http``,
``mqtt``), the live ingest actor (``live``) and per-site replay stages (``sites``)."""
