"""Shared by several test files (pytest puts this folder on sys.path)."""
import timm
import torch


def micro(scheme, num_classes=3, **kw):
    """The zoo's micro model with ``scheme`` (any options in ``kw``), its scheme parameters drawn from N(0, 0.1)
    so that zero-initialised tables (iRPE, decomposed) take part; the same weights on every call."""
    torch.manual_seed(0)
    m = timm.create_model('vitpe_micro_patch16_64', pos_enc=scheme, num_classes=num_classes, **kw).eval()
    with torch.no_grad():
        for p in m.pos_enc.parameters():
            p.normal_(0, 0.1)
    return m


class Exploit:
    """Unpickling this would run code (create the file ``path``). Tests never unpickle it: that a file holding it
    could run code is shown by ``torch.serialization.get_unsafe_globals_in_checkpoint``, which reads the pickle's
    opcodes without running them."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))
