"""Message -> row -> committed batch: decode, intake (message -> delivery), the writer,
bulk inserts, conflicts, dead-letter re-ingest."""
