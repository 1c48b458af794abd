"""Finding duplicates: candidates from the embeddings, verification, clusters, the keep rule, report, quarantine."""
