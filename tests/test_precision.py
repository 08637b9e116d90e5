"""Mixed precision: under bf16 autocast every scheme stays within 1 % (relative Frobenius error of the final
tokens) of float32, and what positions are made of (coordinates, frequencies, rotations, Fourier terms, bucket
ids, relative indices, resampled tables) is computed in float32 or as integers whatever the autocast dtype."""
import pytest
import torch

import vitpe
from helpers import micro
from vitpe.pe import Grid
from vitpe.pe.rotary import rope_mixed_angles

BF16_TOLERANCE = 0.01  # measured here: 0.23-0.36 % for every scheme at 64 and 160 px (bf16 has 8 bits of mantissa)


@pytest.mark.parametrize('scheme', vitpe.list_pos_encodings())
def test_bf16_autocast_stays_within_tolerance_of_float32(scheme):
    m = micro(scheme)
    for img in (64, 160):  # the reference size and 2.5x
        x = torch.randn(2, 3, img, img)
        with torch.no_grad():
            ref = m.forward_features(x)
            with torch.autocast('cpu', dtype=torch.bfloat16):
                got = m.forward_features(x)
        err = ((got.float() - ref).norm() / ref.norm()).item()
        assert 0 < err < BF16_TOLERANCE, (scheme, img, err)  # > 0: autocast did run the blocks in bf16


def prepared(scheme, autocast, grid=Grid((10, 7), 1), **options):
    pe = micro(scheme, pos_enc_args=options).pos_enc
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast), torch.no_grad():
        return pe, pe.prepare(grid, device=torch.device('cpu'))


def test_positions_are_float32_under_autocast():
    for autocast in (False, True):
        _, rot = prepared('rope_axial', autocast)
        assert rot.rot.dtype == torch.complex64
        pe, mixed = prepared('rope_mixed', autocast)
        assert mixed.coords.dtype == mixed.freqs.dtype == torch.float32
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            assert rope_mixed_angles(mixed.coords, mixed.freqs[:, 0]).dtype == torch.float32
        pe, fourier = prepared('fourier', autocast)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast), torch.no_grad():
            terms = pe.fourier_terms(fourier.coords)
        assert fourier.coords.dtype == terms.dtype == torch.float32
        _, sincos = prepared('sincos', autocast)
        assert sincos.pos.dtype == torch.float32
        _, indices = prepared('decomposed', autocast)
        assert indices.coords.dtype == torch.long and all(i.dtype == torch.long for i in indices.rel_index)
    # and the values are the float32 ones, not merely the dtype
    torch.testing.assert_close(prepared('rope_axial', True)[1].rot, prepared('rope_axial', False)[1].rot,
                               rtol=0, atol=0)
    pe = micro('fourier').pos_enc
    coords = pe.prepare(Grid((10, 7), 1)).coords * 13.7  # far positions: bf16 would lose them
    with torch.no_grad():
        plain = pe.fourier_terms(coords)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            torch.testing.assert_close(pe.fourier_terms(coords), plain, rtol=0, atol=0)


def test_bucket_ids_and_tables_under_autocast():
    pe = micro('irpe').pos_enc
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ids = pe.bucket_ids(Grid((10, 7), 1))
    assert ids.dtype == torch.long and torch.equal(ids, pe.bucket_ids(Grid((10, 7), 1)))
    pe = micro('ape').pos_enc
    with torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad():
        table = pe.table.at(pe, (9, 11))
    assert table.dtype == torch.float32
