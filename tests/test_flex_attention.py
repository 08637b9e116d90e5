"""Attention's 'flex' backend: the offset-bias schemes' biases as FlexAttention score_mods give the outputs of the
SDPA path (checked on the CPU, where flex runs its eager reference); forwards flex cannot serve stay on SDPA."""
import warnings

import pytest
import timm
import torch
from helpers import micro

import vitpe.layers.attention as attention
from vitpe.layers import set_attention_backend

SCORE_MOD_SCHEMES = ['alibi', 'fire', 'fire_axes', 'kerple', 'lookhere']


@pytest.fixture
def flex_calls(monkeypatch):
    """The number of flex_attention calls attention makes (the real one runs)."""
    calls = []
    real = attention.flex_attention

    def counted(*args, **kwargs):
        calls.append((args[0].shape, args[0].dtype, args[1].dtype, args[2].dtype))
        return real(*args, **kwargs)
    monkeypatch.setattr(attention, 'flex_attention', counted)
    return calls


def both_backends(model, *args, **kwargs):
    """The model's output through SDPA and through the flex backend (eager flex warns that it is a reference)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        sdpa = set_attention_backend(model, 'sdpa')(*args, **kwargs)
        flex = set_attention_backend(model, 'flex')(*args, **kwargs)
    set_attention_backend(model, 'sdpa')
    return sdpa, flex


@pytest.mark.parametrize('entry', SCORE_MOD_SCHEMES)
@pytest.mark.parametrize('kind', ['64', 'video_8x64'])
def test_flex_gives_the_bias_path_output(entry, kind, flex_calls):
    torch.manual_seed(0)
    model = timm.create_model(f'vitpe_micro_patch16_{entry}_{kind}', num_classes=5).eval()
    x = torch.randn(2, 3, 48, 80) if kind == '64' else torch.randn(2, 3, 4, 48, 80)  # not the training grid
    sdpa, flex = both_backends(model, x)
    assert len(flex_calls) == len(model.blocks)  # every block went through flex
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)


def test_flex_with_position_interpolation_and_logit_scaling(flex_calls):
    model = micro('kerple', pos_enc_args=dict(per_layer=True))
    x = torch.randn(2, 3, 96, 112)
    sdpa, flex = both_backends(model, x, strategy='pi+logit')  # offsets scaled, logits (and bias) scaled
    assert flex_calls
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sdpa, model(x)), 'the strategy changed nothing: the test would not see a mistake'


def test_flex_in_window_blocks(flex_calls):
    model = micro('alibi', img_size=(64, 96), window_size=2, global_blocks=(1,))  # windows tile the 4 x 6 grid
    sdpa, flex = both_backends(model, torch.randn(2, 3, 64, 96))
    assert len(flex_calls) == 4
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('case', ['padded windows', 'no score_mod', 'cpu gradients', 'random positions',
                                  'compiled on the cpu', 'observer', 'attention dropout', 'chunked on the cpu'])
def test_forwards_flex_cannot_serve_stay_on_sdpa(case, flex_calls):
    x = torch.randn(2, 3, 64, 64)
    if case in ('observer', 'chunked on the cpu'):
        model = micro('kerple')
        for module in model.modules():
            if isinstance(module, attention.Attention) and case == 'observer':
                module.observer = lambda attn, ctx, layer, rows: None
            elif isinstance(module, attention.Attention):  # flex's CPU reference would build the whole scores
                module.bias_budget_mb = 1e-4
    elif case == 'attention dropout':
        model = micro('lookhere', attn_drop_rate=0.1).train()  # flex has no dropout
    elif case == 'padded windows':
        model = micro('alibi', window_size=3)  # 4 x 4 grid in windows of 3: padded keys are masked
    elif case == 'no score_mod':
        model = micro('decomposed')
    elif case == 'compiled on the cpu':  # inductor's CPU flex kernel rejects these score_mods (torch 2.14)
        model = micro('alibi')
        torch._dynamo.reset()
        model.forward = torch.compile(model.forward)
    else:
        model = micro('fire', pos_enc_args=dict(random_positions=4) if case == 'random positions' else {})
        model.train()
    sdpa, flex = both_backends(model, x) if case != 'cpu gradients' else (None, None)
    if case == 'cpu gradients':  # flex has no backward on the CPU: training there keeps SDPA
        set_attention_backend(model, 'flex')(x).sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.pos_enc.parameters())
    elif case not in ('random positions', 'attention dropout'):  # random draws: only that flex was not used
        torch.testing.assert_close(flex, sdpa)
    assert flex_calls == []


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match=r"attention backend must be one of \['sdpa', 'flex'\], got 'xformers'"):
        set_attention_backend(micro('alibi'), 'xformers')


def test_flex_under_autocast_attends_in_the_autocast_dtype(flex_calls):
    """With qk_norm, autocast leaves q and k in float32 and v in bfloat16: flex gets all three in bfloat16, as SDPA
    does under autocast, and a bias rounded as the bias path rounds it."""
    model = timm.create_model('vitpe_micro_patch16_fire_64', qk_norm=True).eval()
    x = torch.randn(2, 3, 48, 80)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        sdpa, flex = both_backends(model, x)
    assert flex_calls and {call[1:] for call in flex_calls} == {(torch.bfloat16,) * 3}
    torch.testing.assert_close(flex.float(), sdpa.float(), atol=3e-2, rtol=3e-2)  # bfloat16 rounding


def test_flex_index_is_built_once_per_grid(flex_calls, monkeypatch):
    """The per-token offset indices depend on the grid only: one build serves every layer and forward."""
    from vitpe.pe.offset_bias import OffsetBiasPE
    builds = []
    real = OffsetBiasPE.flex_index
    monkeypatch.setattr(OffsetBiasPE, 'flex_index', staticmethod(lambda *a: builds.append(1) or real(*a)))
    model = micro('lookhere')
    for size in (64, 64, 80):
        both_backends(model, torch.randn(1, 3, size, 64))
    assert len(flex_calls) == 3 * len(model.blocks) and len(builds) == 2  # two grids
