"""peewee-migrate migrations (``NNN_name.py``); they never import today's models."""
