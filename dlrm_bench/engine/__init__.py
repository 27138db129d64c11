"""The single-instance benchmark engine (imports torch; import it after the ISA env is set)."""
