"""Key pairs on disk: `<service>.key` (private, PKCS#8 PEM, mode 600) and `<service>.pub` (public, PEM), one pair per
service, in one directory (`SHOP_KEYS_DIR`). A deployment mounts each service's private key where that service runs
and every public key everywhere; `shop keys generate` writes a set, `shop demo` and the tests a throwaway one.

Why asymmetric, though an HMAC is some fifty times cheaper: whoever can verify an HMAC can also forge it, so every
consumer of an event type could speak for its producer. With Ed25519 a compromised service can sign only as itself.
`shop bench` prints what signing and verifying cost per order beside the worker CPU they add to; it is a few percent.

Keys are read and written with `cryptography` (PEM files; the HTTP edge's tokens use them through PyJWT); messages
are signed and verified with libsodium (PyNaCl) on the same raw keys: the same Ed25519 signatures, and libsodium
verifies one in less than half the time OpenSSL takes (38 against 84 µs for a 580-byte envelope, measured here)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey


class KeyRing:
    """`Signatures` over Ed25519: signs as the services whose private keys it holds, verifies every known service."""

    def __init__(self, private: dict[str, Ed25519PrivateKey], public: dict[str, Ed25519PublicKey]) -> None:
        self.private, self.public = private, public
        raw = serialization.Encoding.Raw
        self._signing = {name: SigningKey(key.private_bytes(raw, serialization.PrivateFormat.Raw,
                                                            serialization.NoEncryption()))
                         for name, key in private.items()}
        self._verifying = {name: VerifyKey(key.public_bytes(raw, serialization.PublicFormat.Raw))
                           for name, key in public.items()}

    @classmethod
    def load(cls, directory: Path) -> KeyRing:
        directory = Path(directory)
        private = {path.stem: _private(path) for path in sorted(directory.glob("*.key"))}
        public = {path.stem: _public(path) for path in sorted(directory.glob("*.pub"))}
        return cls(private, public)

    def sign(self, signer: str, data: bytes) -> str:
        return base64.urlsafe_b64encode(self._signing[signer].sign(data).signature).decode()

    def verify(self, signer: str, data: bytes, signature: str) -> bool:
        key = self._verifying[signer]
        try:
            key.verify(data, base64.urlsafe_b64decode(signature.encode()))
        except (BadSignatureError, ValueError, TypeError):
            return False
        return True

    def missing(self, services: Iterable[str], signing_as: Iterable[str] = ()) -> list[str]:
        """What this process lacks to run: a public key of each service, a private key of each it signs as."""
        return ([f"{name}.pub" for name in services if name not in self.public]
                + [f"{name}.key" for name in signing_as if name not in self.private])


def generate(directory: Path, services: Iterable[str], overwrite: bool = False) -> list[Path]:
    """A key pair per service; an existing pair is kept unless `overwrite`. Returns the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in services:
        private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
        if private_path.exists() and public_path.exists() and not overwrite:
            continue
        key = Ed25519PrivateKey.generate()
        private_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        os.chmod(private_path, 0o600)
        public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
        written += [private_path, public_path]
    return written


def _private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def _public(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


class ServiceTokenKeys:
    """One service's key pair as the HTTP edge's token keys (`events.http.TokenKeys`): the user service signs access
    tokens, every API verifies them."""

    def __init__(self, ring: KeyRing, service: str) -> None:
        self.ring, self.service = ring, service

    def token_signing_key(self) -> Ed25519PrivateKey:
        return self.ring.private[self.service]

    def token_verifying_key(self) -> Ed25519PublicKey:
        return self.ring.public[self.service]
