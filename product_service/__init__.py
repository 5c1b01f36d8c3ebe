"""Owns the catalogue and the stock: creates products, changes prices, reserves stock for orders and releases it."""
