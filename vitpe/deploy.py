"""Deployment: torch.export with dynamic sizes, torch.compile recompiles, FX tracing and bf16, per scheme.

``export_model`` exports a vitpe model with every spatial axis dynamic (height and width; frames too for
video), in multiples of the patch size; ``deployment_report`` measures what README's Deployment table shows
(``python tools/export.py --report``).
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import torch
from torch.export import Dim, ExportedProgram

AXES = ('t', 'h', 'w')


class ExportError(RuntimeError):
    """A model could not be exported as asked; the message names the reason and what works instead."""


def example_input(model, batch: int = 2) -> torch.Tensor:
    """An input at the model's reference size with the last axis one patch longer (an example with equal sizes
    would tie them together in the exported graph)."""
    pe = model.patch_embed
    size = list(pe.img_size)
    size[-1] += pe.patch_size[-1]
    return torch.randn(batch, pe.in_chans, *size)


def dynamic_shapes(model, max_patches: int = 256) -> Dict:
    """Every spatial axis a symbolic multiple of its patch size (2 to ``max_patches`` patches: PyTorch specialises
    sizes of 0 and 1, so a one-patch axis needs a fixed-size export), and a dynamic batch."""
    patch = model.patch_embed.patch_size
    axes = AXES[-len(patch):]
    return {'x': {0: Dim('batch', min=1, max=1024),
                  **{2 + i: p * Dim(f'{a}_patches', min=2, max=max_patches)
                     for i, (a, p) in enumerate(zip(axes, patch))}}}


def _failed(model, example, dynamic: bool, what: str, e: Exception) -> ExportError:
    scheme = getattr(getattr(model, 'pos_enc', None), 'name', type(model).__name__)
    reason = str(e).strip().split('\n')[0][:300]
    kind = 'with dynamic sizes' if dynamic else f'at size {tuple(example.shape[2:])}'
    hint = '; export at a fixed size (dynamic=False, tools/export.py --static)' if dynamic else ''
    return ExportError(f"scheme '{scheme}' could not be exported to {what} {kind}: {type(e).__name__}: {reason}{hint}")


def export_onnx(model, path: str, example: Optional[torch.Tensor] = None, dynamic: bool = True) -> None:
    """ONNX (``torch.onnx.export``, dynamo) of ``model`` to ``path``, dynamic sizes as ``export_model``."""
    model = model.eval()
    example = example_input(model) if example is None else example
    try:
        program = torch.onnx.export(model, (example,), dynamo=True, verbose=False,
                                    dynamic_shapes=dynamic_shapes(model) if dynamic else None)
    except Exception as e:
        raise _failed(model, example, dynamic, 'ONNX', e) from e
    program.save(path)


def export_model(model, example: Optional[torch.Tensor] = None, dynamic: bool = True,
                 max_patches: int = 256) -> ExportedProgram:
    """``torch.export.export`` of ``model`` (eval mode) for inputs like ``example``, with ``dynamic`` sizes as
    ``dynamic_shapes`` says."""
    model = model.eval()
    example = example_input(model) if example is None else example
    try:
        return torch.export.export(model, (example,),
                                   dynamic_shapes=dynamic_shapes(model, max_patches) if dynamic else None)
    except Exception as e:  # name the reason; a fixed-size export is the fallback
        raise _failed(model, example, dynamic, 'torch.export', e) from e


def compile_recompiles(model, sizes: Sequence[Sequence[int]], batch: int = 2) -> Dict[str, float]:
    """torch.compile(dynamic=True) over ``sizes`` (eager backend: dynamo's capture, no code generation):
    graphs compiled after the first, and the largest difference to eager."""
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    counter = CompileCounterWithBackend('eager')
    compiled = torch.compile(model.eval(), backend=counter, dynamic=True)
    diff = 0.0
    with torch.no_grad():
        for size in sizes:
            x = torch.randn(batch, model.patch_embed.in_chans, *size)
            diff = max(diff, (compiled(x) - model(x)).abs().max().item())
    torch._dynamo.reset()
    return {'recompiles': counter.frame_count - 1, 'max_abs_diff': diff}


def _bf16_error(model, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = model.forward_features(x)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            got = model.forward_features(x).float()
    return ((got - ref).norm() / ref.norm()).item()


def _fx_ok(model, x: torch.Tensor) -> bool:
    from torchvision.models.feature_extraction import create_feature_extractor
    traced = create_feature_extractor(model, return_nodes={'head': 'logits'})
    with torch.no_grad():
        return bool(torch.equal(traced(x)['logits'], model(x)))


def _onnx_dynamic_ok(model, x: torch.Tensor) -> Optional[bool]:
    """Dynamic ONNX export run by onnxruntime at another size equals eager (None: onnxruntime not installed)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'model.onnx')
        try:
            export_onnx(model, path)
        except ExportError:
            return False
        session = onnxruntime.InferenceSession(path)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        return bool(torch.allclose(torch.from_numpy(got), model(x), atol=1e-4))


def deployment_report(schemes: Sequence[str], model: str = 'vitpe_micro_patch16_{scheme}_64') -> List[Dict]:
    """One row per scheme: FX trace equals eager, dynamic export equals eager at another size, recompiles of
    torch.compile(dynamic=True) over four sizes after the first compile, bf16 autocast error."""
    import timm
    rows = []
    for scheme in schemes:
        start = time.time()
        torch.manual_seed(0)
        m = timm.create_model(model.format(scheme=scheme), num_classes=10).eval()
        x = torch.randn(2, 3, *m.patch_embed.img_size)
        other = torch.randn(2, 3, *[2 * s + p for s, p in zip(m.patch_embed.img_size, m.patch_embed.patch_size)])
        try:
            program = export_model(m)
            with torch.no_grad():
                exported = bool(torch.allclose(program.module()(other), m(other), atol=1e-5))
        except ExportError:
            exported = False
        sizes = [tuple(example_input(m).shape[2:]), (96, 128), (48, 80), (160, 112)]  # not square: see example_input
        rows.append({'scheme': scheme, 'fx': _fx_ok(m, x), 'export_dynamic': exported,
                     'onnx_dynamic': _onnx_dynamic_ok(m, other),
                     **compile_recompiles(m, sizes), 'bf16_rel_error': _bf16_error(m, other),
                     'seconds': round(time.time() - start, 1)})
    return rows


def to_markdown(rows: Sequence[Dict]) -> str:
    def yes(v):
        return 'n/a' if v is None else ('yes' if v else 'fixed size only')
    lines = ['| scheme | FX trace | torch.export, dynamic | ONNX, dynamic | torch.compile recompiles | bf16 error |',
             '|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['scheme']} | {yes(r['fx'])} | {yes(r['export_dynamic'])} | {yes(r['onnx_dynamic'])} | "
                     f"{r['recompiles']} | {100 * r['bf16_rel_error']:.2f} % |")
    return '\n'.join(lines) + '\n'
