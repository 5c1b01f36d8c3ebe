"""Owns orders: places them, and settles them when payment succeeds or fails."""
