"""Helpers shared by the tests: waiting on conditions, the in-process shop, the brokers as tests see them, fakes."""
