"""Alembic environment: the caller hands over a live connection in ``config.attributes``."""

from alembic import context

from bastion.control.store._tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
