"""Owns payments: charges each order once through the (simulated) card gateway."""
