"""How uploader credentials are digested for storage and lookup (shared by auth and the services that issue them)."""

import hashlib


def nightscout_secret_digest(sha1_hex: str) -> str:
    """Uploaders send sha1(secret) as `api-secret`; we store sha256 of that, so the stored value is not a credential."""
    return hashlib.sha256(sha1_hex.strip().lower().encode()).hexdigest()


def nightscout_token_digest(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()
