#!/usr/bin/env python
"""What each positional scheme costs: images per second and peak memory, measured side by side in one
run, interleaved, against (1) the vitpe trunk with no scheme and (2) timm's own implementation of the
same scheme where timm has one.

    python benchmarks/bench_pe.py --quick                 # ViT-S, 224 and 384, inference (< 10 min, 2 cores)
    python benchmarks/bench_pe.py --models small --sizes 224 384 512 --large-sizes 1024 --modes infer
    python benchmarks/bench_pe.py --models small base --sizes 224 384 512 --modes infer train   # all of it (hours)
    python benchmarks/bench_pe.py --smoke --output bench.json   # seconds; for the test suite
    python benchmarks/bench_pe.py --models small --sizes --large-sizes 1024 --window 14   # ViTDet's layout, 1024 px
    python benchmarks/bench_pe.py --models small --sizes 224 512 --large-sizes 1024 --schemes alibi fire kerple \
        lookhere --no-timm --attention-backend flex        # FlexAttention for the offset biases (a GPU)

Prints a table of ratios (vitpe / reference; > 1 means vitpe is faster) and writes one JSON record per
measurement. On CUDA it uses bf16 autocast and CUDA events; on the CPU float32 and perf_counter.
Peak memory (``vitpe.memory.PeakMemory``): CUDA max_memory_allocated; CPU the largest rise of malloc's
bytes in use (glibc mallinfo2, sampled every half millisecond) during the measured step.
``benchmarks/peak_memory.py`` measures one forward the same way in a fresh process (the test of the 1.5x
bound uses it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Callable, Dict, List

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import timm  # noqa: E402

import vitpe  # noqa: E402
from vitpe.dense.backbone import vitdet_global_blocks  # noqa: E402
from vitpe.layers import attention as attention_module, set_attention_backend  # noqa: E402
from vitpe.memory import peak_memory_mb  # noqa: E402

SIZES = {'tiny': (192, 3), 'small': (384, 6), 'base': (768, 12)}


def abswin_window(img: int, patch: int = 16) -> int:
    """hiera tiles its window table a whole number of times: 7 or 8, whichever divides the grid, else the grid."""
    grid = img // patch
    return next(w for w in (7, 8, grid) if grid % w == 0)


class TimmViTHieraAbsWin(timm.models.vision_transformer.VisionTransformer):
    """The reference for abswin: timm's ViT trunk with timm hiera's window-absolute embedding
    (``Hiera._pos_embed`` with abs_win_pos_embed; no timm ViT has it), on patch tokens, class token after."""

    def __init__(self, window: int, **kwargs):
        super().__init__(pos_embed='none', **kwargs)
        grid = self.patch_embed.grid_size
        self.pos_embed = nn.Parameter(torch.randn(1, self.embed_dim, *grid) * .02)  # hiera keeps NCHW
        self.pos_embed_win = nn.Parameter(torch.randn(1, self.embed_dim, window, window) * .02)
        self.mask_spatial_shape = [g // window for g in grid]

    def _pos_embed(self, x):
        x = timm.models.hiera.Hiera._pos_embed(self, x)
        return self.pos_drop(torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1))


# schemes timm implements, and how to build timm's model at the same size and options
TIMM_REFS = {
    'ape': lambda size, img: timm.create_model(f'vit_{size}_patch16_224', img_size=img, num_classes=0),
    'rope_axial': lambda size, img: timm.create_model(f'vit_{size}_patch16_rope_224', img_size=img, num_classes=0),
    'rope_mixed': lambda size, img: timm.create_model(f'vit_{size}_patch16_rope_mixed_224', img_size=img,
                                                      num_classes=0),
    'decomposed': lambda size, img: timm.models.vision_transformer_sam.VisionTransformerSAM(
        img_size=img, patch_size=16, embed_dim=SIZES[size][0], depth=12, num_heads=SIZES[size][1],
        use_abs_pos=False, use_rel_pos=True, window_size=0, neck_chans=0, num_classes=0, global_pool='avg'),
    'abswin': lambda size, img: TimmViTHieraAbsWin(
        abswin_window(img), img_size=img, patch_size=16, embed_dim=SIZES[size][0], depth=12,
        num_heads=SIZES[size][1], num_classes=0),
}
# vitpe options that match the timm reference (timm's RoPE-ViT models use LayerScale; hiera's window)
MATCH_TIMM = {'rope_axial': lambda img: dict(init_values=1e-5), 'rope_mixed': lambda img: dict(init_values=1e-5),
              'abswin': lambda img: dict(pos_enc_args=dict(window_size=abswin_window(img)))}


def make_step(model, x, mode: str, device) -> Callable[[], None]:
    amp = device.type == 'cuda'

    def infer():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        return out

    def train():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    return infer if mode == 'infer' else train


def timed(step, device) -> float:
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def build(scheme: str, size: str, img: int, device, timm_ref: bool = False, match_timm: bool = False,
          window: int = 0, backend: str = 'sdpa'):
    """``window``: ViTDet's window attention (window blocks, global blocks 2, 5, 8, 11), 0 global everywhere;
    ``backend``: the vitpe model's attention backend (``vitpe.layers.set_attention_backend``)."""
    if timm_ref:
        model = TIMM_REFS[scheme](size, img)
    else:
        kwargs = MATCH_TIMM[scheme](img) if match_timm and scheme in MATCH_TIMM else {}
        if window:
            kwargs.update(window_size=window, global_blocks=vitdet_global_blocks(12))
        model = timm.create_model(f'vitpe_{size}_patch16_224', pos_enc=scheme, img_size=img, num_classes=0, **kwargs)
        set_attention_backend(model, backend)
    return model.to(device).train(False)


def measure_group(models: Dict[str, torch.nn.Module], img: int, batch: int, mode: str, repeats: int,
                  device) -> Dict[str, Dict[str, float]]:
    """Images per second (``best_times``: interleaved, best repeat) and peak memory of each model."""
    x = torch.randn(batch, 3, img, img, device=device)
    steps = {}
    for name, model in models.items():
        model.train(mode == 'train')
        steps[name] = make_step(model, x, mode, device)
    best = best_times(steps, repeats, device)
    mems = {name: peak_memory_mb(step, device) for name, step in steps.items()}
    return {name: {'imgs_per_s': batch / best[name], 'peak_mem_mb': mems[name]} for name in models}


def best_times(steps: Dict[str, Callable[[], object]], repeats: int, device) -> Dict[str, float]:
    """Seconds per step, each step warmed up once, then run in turn ``repeats`` times (interleaved);
    the best repeat per step (as ``timeit``: slower repeats measure interference from the machine)."""
    for step in steps.values():
        step()  # warm-up (and caches)
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(timed(step, device))
    return {name: min(t) for name, t in times.items()}


def attention_path(scheme: str, size: str, img: int, batch: int, window: int = 0) -> str:
    """The attention path of a global block (with windows: the window blocks' after a slash)."""
    m = timm.create_model(f'vitpe_{size}_patch16_224', pos_enc=scheme, img_size=img, num_classes=0)
    path = m.blocks[0].attn.path_for(m.pos_enc, batch, (img // 16) ** 2 + 1)
    if window:
        windows = math.ceil(img / 16 / window) ** 2
        path += '/' + m.blocks[0].attn.path_for(m.pos_enc, batch * windows, window ** 2 + 1)
    return path


FLEX_CALLS = [0]  # flex_attention calls so far (counted, to record the path the measured forwards took)


def count_flex_calls():
    real = attention_module.flex_attention

    def counted(*args, **kwargs):
        FLEX_CALLS[0] += 1
        return real(*args, **kwargs)
    attention_module.flex_attention = counted


def run(args) -> List[dict]:
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    torch.manual_seed(0)
    records = []
    # (model size, image size, mode, batch, repeats); large sizes: inference at a small batch, few repeats
    plan = [(size, img, mode, args.batch, args.repeats) for size in args.models for img in args.sizes
            for mode in args.modes]
    plan += [(size, img, 'infer', args.large_batch, args.large_repeats) for size in args.models
             for img in args.large_sizes]
    total = len(plan) * len(args.schemes)
    done = 0
    for size, img, mode, batch, repeats in plan:
        bare = build('none', size, img, device, window=args.window)
        for scheme in args.schemes:
            done += 1
            print(f"[{done}/{total}] {size} {scheme} {img} {mode} batch {batch}", file=sys.stderr, flush=True)
            models = {'vitpe': build(scheme, size, img, device, window=args.window, backend=args.attention_backend),
                      'none': bare}
            if args.timm and scheme in TIMM_REFS and not args.window:  # timm's ViTs have no window attention
                # against timm, vitpe runs with timm's options (LayerScale for RoPE-ViT, hiera's window)
                if scheme in MATCH_TIMM:
                    models['vitpe_as_timm'] = build(scheme, size, img, device, match_timm=True)
                models['timm'] = build(scheme, size, img, device, timm_ref=True)
            flex_calls = FLEX_CALLS[0]
            result = measure_group(models, img, batch, mode, repeats, device)
            # the path the measured forwards took: 'flex' when the flex backend served them
            path = 'flex' if FLEX_CALLS[0] > flex_calls else attention_path(scheme, size, img, batch, args.window)
            for ref in [r for r in ('none', 'timm') if r in result]:
                if ref == 'none' and scheme == 'none':
                    continue
                ours = result['vitpe_as_timm' if ref == 'timm' and 'vitpe_as_timm' in result else 'vitpe']
                theirs = result[ref]
                records.append({
                    'scheme': scheme, 'model': f'vitpe_{size}_patch16_{scheme}_224', 'img_size': img,
                    'window': args.window,
                    'batch': batch, 'mode': mode, 'device': str(device), 'repeats': repeats,
                    'imgs_per_s': ours['imgs_per_s'], 'peak_mem_mb': ours['peak_mem_mb'], 'ref': ref,
                    'ref_imgs_per_s': theirs['imgs_per_s'], 'ref_peak_mem_mb': theirs['peak_mem_mb'],
                    'ratio': ours['imgs_per_s'] / theirs['imgs_per_s'],
                    'mem_ratio': ours['peak_mem_mb'] / max(theirs['peak_mem_mb'], 1e-6),
                    'attention_path': path, 'attention_backend': args.attention_backend,
                })
            del models
    return records


def growth(records: List[dict]) -> Dict[str, Dict[str, float]]:
    """Exponent of time per image and of memory against the number of tokens, fitted (least squares in
    log-log) over the inference sizes, next to the bare trunk's measured alongside. Memory per image
    (the peak rise divided by the batch), as the large sizes run at another batch."""
    out = {}
    for scheme in sorted({r['scheme'] for r in records}):
        rows = [r for r in records if r['scheme'] == scheme and r['ref'] == 'none' and r['mode'] == 'infer']
        if len({r['img_size'] for r in rows}) < 2:
            continue
        def fit(pairs):
            pairs = [(math.log((s / 16) ** 2), math.log(v)) for s, v in pairs if v and v > 0 and v == v]
            if len(pairs) < 2:
                return float('nan')
            mx = sum(p[0] for p in pairs) / len(pairs)
            my = sum(p[1] for p in pairs) / len(pairs)
            return sum((a - mx) * (b - my) for a, b in pairs) / sum((a - mx) ** 2 for a, _ in pairs)
        out[scheme] = {
            'sizes': sorted({r['img_size'] for r in rows}),
            'time_exp': fit([(r['img_size'], 1 / r['imgs_per_s']) for r in rows]),
            'bare_time_exp': fit([(r['img_size'], 1 / r['ref_imgs_per_s']) for r in rows]),
            'mem_exp': fit([(r['img_size'], r['peak_mem_mb'] / r['batch']) for r in rows]),
            'bare_mem_exp': fit([(r['img_size'], r['ref_peak_mem_mb'] / r['batch']) for r in rows]),
        }
    return out


def table(records: List[dict]) -> str:
    lines = ['| scheme | model | size | batch | mode | path | vitpe img/s | vs none | vs timm | mem MB | mem vs none |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    keys = sorted({(r['scheme'], r['model'], r['img_size'], r['batch'], r['mode']) for r in records},
                  key=lambda k: (k[1].split('_')[1], k[2], k[4], k[0]))
    for key in keys:
        scheme, model, img, batch, mode = key
        rs = {r['ref']: r for r in records if (r['scheme'], r['model'], r['img_size'], r['batch'], r['mode']) == key}
        any_r = next(iter(rs.values()))
        ratio = lambda ref: f"{rs[ref]['ratio']:.2f}" if ref in rs else '-'
        mem_none = f"{rs['none']['mem_ratio']:.2f}" if 'none' in rs else '-'
        name = model.split('_')[1] + (f" w{any_r['window']}" if any_r.get('window') else '')
        lines.append(f"| {scheme} | {name} | {img} | {batch} | {mode} | {any_r['attention_path']} | "
                     f"{any_r['imgs_per_s']:.2f} | {ratio('none')} | {ratio('timm')} | {any_r['peak_mem_mb']:.0f} | "
                     f"{mem_none} |")
    return '\n'.join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', default=['small', 'base'], choices=list(SIZES))
    ap.add_argument('--sizes', nargs='*', type=int, default=[224, 384, 512])
    ap.add_argument('--large-sizes', nargs='*', type=int, default=[1024],
                    help='inference only, at --large-batch with --large-repeats (time and memory)')
    ap.add_argument('--large-batch', type=int, default=1)
    ap.add_argument('--large-repeats', type=int, default=1)
    ap.add_argument('--modes', nargs='+', default=['infer', 'train'], choices=['infer', 'train'])
    ap.add_argument('--schemes', nargs='+', default=vitpe.list_pos_encodings())
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--no-timm', dest='timm', action='store_false', help='skip the timm references')
    ap.add_argument('--window', type=int, default=0,
                    help="ViTDet's window attention in every model (e.g. 14; global blocks 2, 5, 8, 11); 0: none")
    ap.add_argument('--attention-backend', default='sdpa', choices=['sdpa', 'flex'],
                    help="the schemes' attention: 'flex' runs alibi, fire, kerple and lookhere through FlexAttention "
                         "(compiled on CUDA; on the CPU an eager reference, inference only); the bare trunk keeps SDPA")
    ap.add_argument('--quick', action='store_true', help='ViT-S, 224 and 384, inference')
    ap.add_argument('--smoke', action='store_true', help='seconds: tiny model, 64 px (and 96 px large), 3 schemes')
    ap.add_argument('--output', default='bench.json')
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.sizes, args.modes, args.large_sizes, args.repeats = ['small'], [224, 384], ['infer'], [], 3
    if args.smoke:
        args.models, args.sizes, args.modes, args.large_sizes = ['tiny'], [64], ['infer', 'train'], [96]
        args.schemes, args.repeats, args.batch = ['ape', 'irpe', 'abswin'], 1, 2
    count_flex_calls()
    records = run(args)
    summary = {'records': records, 'growth': growth(records)}
    with open(args.output, 'w') as f:
        json.dump(summary, f, indent=1)
    print(table(records))
    for scheme, g in summary['growth'].items():
        print(f"growth {scheme}: time ~ N^{g['time_exp']:.2f} (bare N^{g['bare_time_exp']:.2f}), "
              f"memory ~ N^{g['mem_exp']:.2f} (bare N^{g['bare_mem_exp']:.2f})")
    print(f"wrote {args.output}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
