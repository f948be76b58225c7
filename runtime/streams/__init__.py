"""Streams in and out: the event schema and its validation (``schema``, which casts each
column with ``coerce``), sources that replay files or iterators (``sources``) and sinks
that write topics out (``sinks``)."""
