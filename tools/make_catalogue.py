"""Write models/README.md: one row per registered vitpe model (``vitpe.models.catalogue``).

    python tools/make_catalogue.py            # rewrite the catalogue
    python tools/make_catalogue.py --check    # fail if the catalogue is out of step with the registry
    python tools/make_catalogue.py --new-only # measure only models not listed yet (keeps listed rows whose
                                              # parameter count still matches)
"""
import argparse
import pathlib
import sys

import timm
from tqdm import tqdm

import vitpe  # noqa: F401  (registers the zoo)
from vitpe.models import catalogue

CATALOGUE = pathlib.Path(__file__).resolve().parents[1] / 'models' / 'README.md'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--check', action='store_true')
    ap.add_argument('--new-only', action='store_true')
    args = ap.parse_args()
    names = timm.list_models('vitpe_*')
    if args.check:
        rows = catalogue.parse(CATALOGUE.read_text())
        bad = sorted(set(names) ^ set(rows))
        bad += [n for n in names if n in rows and float(rows[n][4]) != round(catalogue.count_params(n) / 1e6, 2)]
        if bad:
            sys.exit(f"catalogue out of step with the registry: {bad}")
        print(f"catalogue matches {len(names)} models")
        return
    kept = {}
    if args.new_only and CATALOGUE.exists():
        rows = catalogue.parse(CATALOGUE.read_text())
        kept = {n: '| ' + ' | '.join(rows[n]) + ' |' for n in names
                if n in rows and float(rows[n][4]) == round(catalogue.count_params(n) / 1e6, 2)}
    lines = [kept.get(name) or catalogue.row(name) for name in tqdm(names, desc='catalogue')]
    CATALOGUE.write_text(catalogue.HEADER + '\n'.join(lines) + '\n')
    print(f"wrote {CATALOGUE} ({len(lines)} models)")


if __name__ == '__main__':
    main()
