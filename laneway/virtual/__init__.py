"""Virtual lanes, gateway side: publisher sessions, task relay, wake, garbage collection."""
