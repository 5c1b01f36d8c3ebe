"""Service identity: an Ed25519 key pair per service (the `cryptography` package). A service holds only its own
private key; every process holds every service's public key, so each consumer can tell who produced a message and a
compromised service cannot speak for another. The user service's key also signs the API's access tokens."""
