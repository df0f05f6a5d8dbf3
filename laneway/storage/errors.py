"""Storage errors: the part of laneway's error tree that declared state can raise.

    LanewayError
     └── StorageError              the database answered with something we cannot use
          ├── DatabaseUnavailable  it cannot be reached or opened (names the URL, never its password)
          ├── AlreadyExists        a name that must be unique is taken
          ├── InvalidValue         a value cannot be stored as given (a bad name, an inline secret)
          └── StoreUnavailable     the runtime store (Redis, the cache directory) cannot be used

SQLAlchemy and driver exceptions are translated into these at the repository boundary
(``laneway.storage.repos``) and in ``Database.open``; they never travel further.
"""

from __future__ import annotations

from laneway.errors import LanewayError


class StorageError(LanewayError):
    status = 500
    error_type = "server_error"
    code = "storage_error"


class DatabaseUnavailable(StorageError):
    status = 503
    error_type = "service_unavailable"
    code = "database_unavailable"


class AlreadyExists(StorageError):
    status = 409
    error_type = "invalid_request_error"
    code = "already_exists"


class InvalidValue(StorageError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_value"


class StoreUnavailable(StorageError):
    """The runtime store cannot be reached or used: Redis is down, the directory cannot be created
    or written. The message names the place (never a password) and what to check."""

    status = 503
    error_type = "service_unavailable"
    code = "runtime_store_unavailable"
