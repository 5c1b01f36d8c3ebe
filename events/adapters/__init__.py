"""One folder per adapter. An adapter implements the core's ports (a store, a broker, dead letters) for one
technology; it may use the core and its libraries, never another adapter. `shop/bootstrap.py` chooses them."""
