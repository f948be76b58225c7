"""Streams in and out: the event schema and its validation (``schema``), sources that
replay files or iterators (``sources``) and sinks that write topics out (``sinks``)."""
