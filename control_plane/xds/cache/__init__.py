"""The snapshot and its cache: versioned per type by content hash, checked for closed
references before it is published."""
