"""The SQLite store: opening and migrating, queries and reads, SQLite error handling,
maintenance, retention purge, the disk guard, integrity, backup and transfer."""
