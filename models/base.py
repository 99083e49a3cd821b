"""The model base class and the database proxy the models bind to."""

from __future__ import annotations

from typing import Any

import peewee

database_proxy = peewee.DatabaseProxy()


class SequenceField(peewee.BigAutoField):
    """A primary key that is never reused, even after the newest rows are deleted.

    SQLite needs ``AUTOINCREMENT`` for that (plain rowids reuse the maximum after a delete);
    other dialects' sequences never go back, so the keyword is only added for SQLite.
    """

    def ddl(self, ctx: Any) -> Any:
        node = super().ddl(ctx)
        db = self.model._meta.database
        target = getattr(db, "obj", db)
        if isinstance(target, peewee.SqliteDatabase):
            return peewee.NodeList((node, peewee.SQL("AUTOINCREMENT")))
        return node


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False
