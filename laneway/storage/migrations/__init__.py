"""The Alembic environment for laneway's declared state, shipped inside the package so that
``laneway serve`` (and ``laneway.storage.migrate``) can upgrade a database without an
alembic.ini on disk. Developers can also drive it with the alembic command; see ``alembic.ini``."""
