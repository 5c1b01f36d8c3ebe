"""Tells customers how their order ended, once per outcome."""
