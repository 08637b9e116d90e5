#!/usr/bin/env python
"""Export a vitpe model (by name or from a training checkpoint) with torch.export, every spatial axis dynamic;
or print the deployment table of every scheme (README's Deployment section).

    python tools/export.py --model vitpe_small_patch16_rope_mixed_224 --output rope_mixed.pt2
    python tools/export.py --checkpoint runs/x/best.pth --output x.pt2          # the checkpoint's model
    python tools/export.py --model vitpe_micro_patch16_irpe_64 --static --output irpe64.pt2   # fixed size
    python tools/export.py --model vitpe_micro_patch16_ape_64 --onnx --output ape.onnx   # ONNX (dynamo exporter)
    python tools/export.py --report                                             # every scheme: FX, export, compile, bf16

Load an export with ``torch.export.load(path).module()``; it takes any size the patch divides.
"""
import argparse
import sys

import timm
import torch
from tqdm import tqdm

import vitpe
from vitpe.checkpoint import load_model
from vitpe.deploy import ExportError, deployment_report, example_input, export_model, export_onnx, to_markdown
from vitpe.errors import TrainingError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument('--model', help='a vitpe model name (random weights unless --pretrained-file)')
    src.add_argument('--checkpoint', help='a vitpe training checkpoint or model.safetensors')
    src.add_argument('--report', action='store_true', help='print the deployment table of every scheme')
    ap.add_argument('--pretrained-file', help='with --model: weights to load (timm pretrained_cfg_overlay file)')
    ap.add_argument('--num-classes', type=int, default=None)
    ap.add_argument('--static', action='store_true', help='export at the example size only')
    ap.add_argument('--onnx', action='store_true', help='write ONNX (dynamo exporter) to --output instead')
    ap.add_argument('--output', default='model.pt2')
    args = ap.parse_args(argv)
    if args.report:
        rows = []
        for scheme in tqdm(vitpe.list_pos_encodings(), desc='schemes'):
            rows += deployment_report([scheme])
        print(to_markdown(rows))
        return 0
    try:
        if args.checkpoint:
            model = load_model(args.checkpoint)[0]
        else:
            kw = {} if args.num_classes is None else {'num_classes': args.num_classes}
            if args.pretrained_file:
                kw.update(pretrained=True, pretrained_cfg_overlay=dict(file=args.pretrained_file, **kw))
            model = timm.create_model(args.model, **kw)
        example = example_input(model)
        if args.onnx:
            export_onnx(model, args.output, example, dynamic=not args.static)
            print(f"wrote {args.output} (ONNX, {'fixed size' if args.static else 'dynamic sizes'})")
            return 0
        program = export_model(model, example, dynamic=not args.static)
    except (ExportError, TrainingError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.export.save(program, args.output)
    with torch.no_grad():
        diff = (program.module()(example) - model.eval()(example)).abs().max().item()
    print(f"wrote {args.output} ({'fixed size ' + str(tuple(example.shape[2:])) if args.static else 'dynamic sizes'}); "
          f"max |exported - eager| = {diff:.2e} at {tuple(example.shape)}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
