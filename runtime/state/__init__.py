"""Entity state: columns in memory (``fields``) indexed by key (``index``, ``keys``),
backed by LanceDB in the data folder (``store``), readable with SQL (``sql``)."""
