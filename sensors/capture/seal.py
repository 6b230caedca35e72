"""Evidence at rest: retained capture files sealed with AES-256-GCM under a keyring that rotates.

A sealed file is a 16-byte header (magic, the sealing key's id) and records,
each one batch's plaintext: ``<u32 ciphertext bytes><u64 plaintext offset>
<12-byte nonce><ciphertext + 16-byte tag>``.  The records' plaintexts,
concatenated, are the pcapng file, so the index keeps pointing at plaintext
offsets and adds the record that holds each block: a flow's packets are read
by decrypting only their records.  The header and the record's plaintext
offset are authenticated with it (a record moved, cut or swapped between files
fails to open).  Nonces are random (96 bits): a key seals far fewer than the
2^32 records that would make a repeat likely.

A keyring is a file of hex keys, one per line, newest first: the first seals,
every key opens what it sealed.  Rotation prepends a key
(:func:`rotate_keyring`); re-sealing old files under the newest key
(:func:`reseal`) keeps every offset, so indexes stay valid and the old key can
then be dropped.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"LWSEAL1\n"
HEADER = len(MAGIC) + 8
RECORD_HEADER = struct.Struct("<IQ12s")  # ciphertext bytes, plaintext offset, nonce
TAG = 16
KEY_ENV = "LIAOWANG_EVIDENCE_KEY"  # a hex key
KEY_FILE_ENV = "LIAOWANG_EVIDENCE_KEY_FILE"  # a keyring file
SUFFIX = ".sealed"


class SealError(ValueError):
    """A sealed file that cannot be opened: no key for it, or it was altered."""


def key_id(key: bytes) -> bytes:
    """The 8 bytes naming a key in the files it seals (not enough to test guesses of a 256-bit key)."""
    return hashlib.sha256(b"liaowang-evidence-key\0" + key).digest()[:8]


class Keyring:
    """Evidence keys, newest first: the first seals, all open."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise SealError("the evidence keyring is empty")
        for key in keys:
            if len(key) != 32:
                raise SealError("evidence keys are 256-bit (64 hex digits)")
        self._ciphers = {key_id(k): AESGCM(k) for k in keys}
        self.current = key_id(keys[0])

    @classmethod
    def from_file(cls, path: Path) -> Keyring:
        try:
            text = path.read_text()
        except OSError as e:
            raise SealError(f"cannot read the evidence keyring {path}: {e.strerror}") from None
        keys = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                keys.append(bytes.fromhex(line))
            except ValueError:
                raise SealError(f"{path}:{number}: not a hex key") from None
        if not keys:
            raise SealError(f"{path}: no key in the evidence keyring")
        return cls(keys)

    @classmethod
    def load(cls, path: str | Path | None) -> Keyring | None:
        """The keyring file ``path``, else the environment's (:meth:`from_env`); None: neither."""
        return cls.from_file(Path(path)) if path else cls.from_env()

    @classmethod
    def from_env(cls) -> Keyring | None:
        """The keyring ``LIAOWANG_EVIDENCE_KEY_FILE`` names, or the one key in ``LIAOWANG_EVIDENCE_KEY``; None: unset."""
        path = os.environ.get(KEY_FILE_ENV)
        if path:
            return cls.from_file(Path(path))
        key = os.environ.get(KEY_ENV)
        if key:
            try:
                return cls([bytes.fromhex(key.strip())])
            except ValueError:
                raise SealError(f"{KEY_ENV} is not a hex key") from None
        return None

    def cipher(self, kid: bytes) -> AESGCM:
        try:
            return self._ciphers[kid]
        except KeyError:
            raise SealError(f"sealed with key {kid.hex()}, which is not in the evidence keyring") from None

    def ids(self) -> list[str]:
        return [k.hex() for k in self._ciphers]


def new_key() -> str:
    return secrets.token_hex(32)


def rotate_keyring(path: Path) -> str:
    """Put a new key first in the keyring file (made, mode 0600, if missing); its id."""
    key = new_key()
    old = path.read_text() if path.exists() else ""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n" + old)
    os.replace(tmp, path)
    return key_id(bytes.fromhex(key)).hex()


class SealedWriter:
    """Appends plaintext; :meth:`seal` encrypts what was appended since the last seal as one record."""

    def __init__(self, out: BinaryIO, keyring: Keyring) -> None:
        self._out = out
        self._kid = keyring.current
        self._cipher = keyring.cipher(self._kid)
        self._pending: list[bytes | memoryview] = []
        self._plain = 0  # plaintext bytes sealed so far
        out.write(MAGIC + self._kid)
        self._size = HEADER

    def append(self, data: bytes | memoryview) -> None:
        self._pending.append(data)

    def tell(self) -> int:
        """The file offset the next record starts at."""
        return self._size

    def seal(self) -> None:
        if not self._pending:
            return
        plain = b"".join(self._pending)
        self._pending = []
        nonce = secrets.token_bytes(12)
        sealed = self._cipher.encrypt(nonce, plain, _aad(self._kid, self._plain))
        self._out.write(RECORD_HEADER.pack(len(sealed), self._plain, nonce))
        self._out.write(sealed)
        self._out.flush()
        self._size += RECORD_HEADER.size + len(sealed)
        self._plain += len(plain)


def _aad(kid: bytes, plain_offset: int) -> bytes:
    return MAGIC + kid + plain_offset.to_bytes(8, "little")


def is_sealed(path: Path) -> bool:
    return path.name.endswith(SUFFIX)


def sealing_key(path: Path) -> bytes | None:
    """The id of the key that sealed the file; None: not a sealed file."""
    with open(path, "rb") as f:
        head = f.read(HEADER)
    return head[len(MAGIC):] if len(head) == HEADER and head.startswith(MAGIC) else None


class SealedReader:
    """Random access to a sealed file's records by their file offset."""

    def __init__(self, f: BinaryIO, keyring: Keyring | None, name: str) -> None:
        head = f.read(HEADER)
        if len(head) < HEADER or not head.startswith(MAGIC):
            raise SealError(f"{name}: not a sealed evidence file")
        self.kid = head[len(MAGIC):]
        if keyring is None:
            raise SealError(f"{name}: the retained packets are encrypted; set {KEY_FILE_ENV} to the evidence "
                            "keyring")
        self._cipher = keyring.cipher(self.kid)
        self._f = f
        self._name = name

    def record(self, offset: int) -> tuple[int, bytes] | None:
        """(plaintext offset, plaintext) of the record at file ``offset``; None: cut short (writer killed)."""
        self._f.seek(offset)
        head = self._f.read(RECORD_HEADER.size)
        if len(head) < RECORD_HEADER.size:
            return None
        length, plain_offset, nonce = RECORD_HEADER.unpack(head)
        sealed = self._f.read(length)
        if len(sealed) < length:
            return None
        try:
            return plain_offset, self._cipher.decrypt(nonce, sealed, _aad(self.kid, plain_offset))
        except InvalidTag:
            raise SealError(f"{self._name}: record at {offset} fails authentication (altered, or not this "
                            "file's)") from None

    def records(self) -> Iterator[tuple[int, int, bytes]]:
        """(file offset, plaintext offset, plaintext) of every complete record, in order."""
        offset = HEADER
        expected = 0
        while (got := self.record(offset)) is not None:
            plain_offset, plain = got
            if plain_offset != expected:
                raise SealError(f"{self._name}: record at {offset} is out of place")
            yield offset, plain_offset, plain
            offset += RECORD_HEADER.size + len(plain) + TAG
            expected += len(plain)


def open_sealed(path: Path, keyring: Keyring | None) -> Iterator[bytes]:
    """The plaintext of a sealed file, record by record."""
    with open(path, "rb") as f:
        for _, _, plain in SealedReader(f, keyring, path.name).records():
            yield plain


def reseal(path: Path, keyring: Keyring) -> bool:
    """Re-encrypt a sealed file under the keyring's newest key, keeping every offset; False: it already was."""
    with open(path, "rb") as f:
        reader = SealedReader(f, keyring, path.name)
        if reader.kid == keyring.current:
            return False
        tmp = path.with_name(path.name + ".reseal")
        with open(tmp, "wb") as out:
            writer = SealedWriter(out, keyring)
            for _, _, plain in reader.records():
                writer.append(plain)
                writer.seal()
            os.fsync(out.fileno())
    os.replace(tmp, path)
    return True


__all__ = ["KEY_ENV", "KEY_FILE_ENV", "SUFFIX", "Keyring", "SealError", "SealedReader", "SealedWriter", "is_sealed",
           "key_id", "new_key", "open_sealed", "reseal", "rotate_keyring", "sealing_key"]
