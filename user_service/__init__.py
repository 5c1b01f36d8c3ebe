"""Owns users: registers them (one account per email address) and tells the others with UserRegistered."""
