"""The in-process inference engine (needs the ``torch`` extra)."""
