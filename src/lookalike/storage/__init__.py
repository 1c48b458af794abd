"""Where vectors live: the IndexStore interface, SQLite (the default, one file) and Milvus."""
