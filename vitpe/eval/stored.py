"""A sweep's records kept in a JSON file beside the checkpoint, so that an interrupted study keeps the sweeps
it finished. The file holds a key: the sweep's arguments and the SHA-256 of each checkpoint file; records are
read back only for the very same sweep of the very same weights, anything else is computed again."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from typing import Any, Dict, List, Optional

from .sweep import Record


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def sweep_key(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The sweep's JSON-able arguments with each checkpoint's digest (what makes its records what they are)."""
    key = {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool, list, tuple, type(None)))}
    key['digests'] = [file_digest(p) for p in kwargs['checkpoints']]
    return json.loads(json.dumps(key))  # tuples as lists, as they come back from the file


def read_stored(path: str, key: Dict[str, Any]) -> Optional[List[Record]]:
    """The records stored at ``path`` for ``key``; None when there are none, or they belong to another sweep
    (other arguments, other weights) or the file is damaged (an interrupted write)."""
    try:
        with open(path) as f:
            stored = json.load(f)
        if stored.get('key') != key:
            return None
        return [Record(**r) for r in stored['records']]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def write_stored(path: str, key: Dict[str, Any], records: List[Record]) -> None:
    """Write atomically (a temporary file, then a rename): a killed study never leaves half a file."""
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump({'key': key, 'records': [asdict(r) for r in records]}, f)
    os.replace(tmp, path)
