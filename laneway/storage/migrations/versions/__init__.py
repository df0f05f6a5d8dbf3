"""Migration scripts, oldest first. Hand-written; ``tests/storage/test_db.py`` checks that head
matches ``laneway.storage.models``."""
