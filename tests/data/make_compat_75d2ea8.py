"""Written once with main at 75d2ea8 (before the architecture change): one small checkpoint per scheme and
the outputs it gave, so tests/test_compat.py can check that checkpoints of that release keep loading."""
import torch, vitpe
from vitpe import VisionTransformer
torch.manual_seed(0)
out = {'commit': '75d2ea8', 'models': {}}
x32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
x48 = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(2))
out['inputs'] = {'32': x32, '48x40': x48}
for scheme in vitpe.list_pos_encodings():
    kw = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3, pos_enc=scheme)
    m = VisionTransformer(**kw).eval()
    with torch.no_grad():
        for p in m.pos_enc.parameters():
            p.normal_(0, 0.2)
        o32, o48 = m(x32), m(x48)
    out['models'][scheme] = {'kwargs': {k: v for k, v in kw.items()}, 'state_dict': m.state_dict(),
                             'out_32': o32, 'out_48x40': o48}
torch.save(out, 'tests/data/compat_75d2ea8_schemes.pth')
