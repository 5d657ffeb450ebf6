"""Study journal files: a record torn by a crash is moved aside before Optuna reads the file.

Optuna's journal is one JSON record per line, appended whole and fsynced. A power cut or a full
disk can leave the last record half-written; Optuna then skips it when reading, but appends the
next record right after it, and from then on the merged line breaks every read. So before a
study is opened, torn bytes move to a backup beside the journal and every complete record stays.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from optuna.storages.journal import JournalFileSymlinkLock

from nas import results
from nas.errors import UserError


def repair(path: Path) -> str | None:
    """Move torn records out of the journal at `path`; a line saying what moved, or None if it was whole.

    Takes Optuna's own lock on the file, so no search on this host appends meanwhile.
    """
    if not path.is_file():
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = _read(path)
        kept, torn = split_torn(data)
        if kept == data:
            return None
        backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}")
        results.write_bytes(backup, torn)
        results.write_bytes(path, kept)
    finally:
        lock.release()
    return (
        f"{path}: moved {len(torn):,} bytes of torn records (a crash mid-write) to {backup.name}; "
        "every complete record was kept"
    )


def split_torn(data: bytes) -> tuple[bytes, bytes]:
    """(complete records, torn bytes) of a journal's contents.

    A record is torn where a line does not parse: an unfinished last line, or a torn record that
    a later append was written straight after. In that case the later record, the longest tail
    of the line that parses, is kept.
    """
    *lines, last = data.split(b"\n")
    kept, torn = [], []
    for line in lines:
        record = _longest_record_suffix(line)
        torn.append(line[: len(line) - len(record)])
        if record:
            kept.append(record + b"\n")
    torn.append(last)  # after the last newline: nothing, or an unfinished record
    return b"".join(kept), b"".join(torn)


def _longest_record_suffix(line: bytes) -> bytes:
    """The line itself if it is one JSON object; else the longest tail that is; else b""."""
    start = 0
    while (start := line.find(b"{", start)) >= 0:
        try:
            if isinstance(json.loads(line[start:]), dict):
                return line[start:]
        except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
            pass
        start += 1
    return b""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read the study journal {path} ({error.strerror}); check --storage") from None
