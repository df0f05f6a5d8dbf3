"""Migration scripts, oldest first. Hand-written; ``tests/test_storage.py`` checks that head
matches ``laneway.storage.models``."""
