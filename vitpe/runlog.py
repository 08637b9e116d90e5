"""The per-epoch log of a training run: log.csv and log.jsonl (rank 0)."""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Dict


class Logger:
    """One row per epoch in log.csv and log.jsonl (rank 0)."""

    def __init__(self, folder: str, resume: bool):
        self.csv_path = os.path.join(folder, 'log.csv')
        self.jsonl_path = os.path.join(folder, 'log.jsonl')
        if not resume:
            for p in (self.csv_path, self.jsonl_path):
                if os.path.exists(p):
                    os.remove(p)

    def write(self, row: Dict[str, Any]) -> None:
        exists = os.path.exists(self.csv_path)
        with open(self.csv_path, 'a', newline='') as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if not exists:
                w.writeheader()
            w.writerow(row)
        with open(self.jsonl_path, 'a') as f:
            f.write(json.dumps(row) + '\n')

    def truncate(self, last_epoch: int) -> None:
        """After a resume, drop rows of epochs that were not checkpointed (killed mid-epoch)."""
        if os.path.exists(self.jsonl_path):
            rows = [json.loads(l) for l in open(self.jsonl_path) if l.strip()]
            rows = [r for r in rows if r['epoch'] <= last_epoch]
            os.remove(self.jsonl_path)
            if os.path.exists(self.csv_path):
                os.remove(self.csv_path)
            for r in rows:
                self.write(r)
