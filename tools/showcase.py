"""Build every positional scheme on the vitpe trunk and print parameters and outputs at several resolutions.

    python tools/showcase.py [--size tiny] [--resolutions 160 224 320 224x320]
"""
import argparse
import time

import timm
import torch
from tqdm import tqdm

import vitpe


def parse_size(text):
    h, _, w = text.partition('x')
    return int(h), int(w or h)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--size', default='tiny', choices=['tiny', 'small', 'base'])
    ap.add_argument('--resolutions', nargs='+', default=['160', '224', '320', '224x320'])
    args = ap.parse_args()
    sizes = [parse_size(r) for r in args.resolutions]
    rows = []
    for scheme in tqdm(vitpe.list_pos_encodings(), desc='schemes'):
        model = timm.create_model(f'vitpe_{args.size}_patch16_{scheme}_224', num_classes=10).eval()
        scheme_params = sum(p.numel() for p in model.pos_enc.parameters())
        cells = []
        for h, w in sizes:
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model(torch.randn(2, 3, h, w))
            cells.append(f"{tuple(out.shape)} {1e3 * (time.perf_counter() - t0):.0f} ms")
        rows.append((scheme, sum(p.numel() for p in model.parameters()) / 1e6, scheme_params, cells))
    head = '| scheme | params (M) | scheme params | ' + ' | '.join(f'{h}x{w}' for h, w in sizes) + ' |'
    print(head)
    print('|' + '---|' * (3 + len(sizes)))
    for scheme, params, sp, cells in rows:
        print(f'| {scheme} | {params:.2f} | {sp} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
