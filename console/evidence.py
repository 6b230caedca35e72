"""``liaowang evidence``: the keys that seal retained packets, and the sealed files.

``rotate KEYRING`` puts a new key first (the sensors seal new files with it
once restarted; every key in the file still opens what it sealed); ``reseal
DIR`` re-encrypts finished files under the newest key, after which older keys
can be removed from the file; ``list DIR`` shows each file and the key that
sealed it; ``export FILE`` writes a sealed file's packets as a plain pcapng
for tools such as Wireshark (the holder of the keyring decides where it goes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sensors.capture.seal import Keyring


def add_parser(sub: Any) -> None:
    e = sub.add_parser("evidence", help="keys of sealed (encrypted) retained packets: rotate, reseal, list, export")
    e.add_argument("action", choices=("rotate", "reseal", "list", "export"))
    e.add_argument("path", metavar="PATH", help="rotate: the keyring file; reseal, list: the retention directory; "
                                                "export: a sealed .pcapng.sealed file")
    e.add_argument("--keyring", metavar="FILE", help="the evidence keyring (default: $LIAOWANG_EVIDENCE_KEY_FILE)")
    e.add_argument("-o", "--out", metavar="FILE", help="export: the plain pcapng to write")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not above: every other command would load the cipher library for nothing
    from sensors.capture.seal import Keyring, SealError, open_sealed, rotate_keyring

    path = Path(args.path)
    try:
        if args.action == "rotate":
            kid = rotate_keyring(path)
            print(f"{path}: new key {kid} first; restart sensors to seal with it, then `liaowang evidence reseal "
                  f"DIR --keyring {path}` and remove the older keys")
            return 0
        if args.action == "list":
            return _list(path)
        keyring = Keyring.load(args.keyring)
        if keyring is None:
            raise SealError("no evidence keyring: --keyring FILE or $LIAOWANG_EVIDENCE_KEY_FILE")
        if args.action == "reseal":
            return _reseal(path, keyring)
        if not args.out:
            raise SealError("export needs -o FILE")
        with open(args.out, "wb") as out:
            for plain in open_sealed(path, keyring):
                out.write(plain)
        print(f"{args.out}: the packets of {path.name}")
        return 0
    except (SealError, OSError) as exc:
        print(f"liaowang: error: {exc}", file=sys.stderr)
        return 2


def _list(directory: Path) -> int:
    from sensors.capture.retain import retained_files
    from sensors.capture.seal import SealError, sealing_key

    if not directory.is_dir():
        raise SealError(f"{directory}: no such directory")
    files = retained_files(directory)
    for f in files:
        kid = sealing_key(f.path)
        key = kid.hex() if kid else "not sealed"
        state = "being written" if f.last_ns is None else "finished"
        print(f"{f.path.name:<60} {f.bytes / 1e6:10,.1f} MB  {state:<13}  key {key}")
    return 0


def _reseal(directory: Path, keyring: Keyring) -> int:
    from sensors.capture.retain import retained_files
    from sensors.capture.seal import reseal

    done = kept = plain = 0
    for f in retained_files(directory):
        if not f.sealed:
            plain += 1
        elif f.last_ns is None:
            kept += 1  # its writer still appends under the key it started with
        elif reseal(f.path, keyring):
            done += 1
    print(f"{directory}: {done} files resealed under key {keyring.current.hex()}"
          + (f"; {kept} still being written (reseal again after they rotate)" if kept else "")
          + (f"; {plain} not sealed (written without a keyring)" if plain else ""))
    return 0


__all__ = ["add_parser", "run"]
