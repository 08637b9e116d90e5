"""vitpe.config: one TrainConfig filled by YAML and the command line (CLI over YAML over defaults), the
parser built from its fields, deprecated aliases, and errors that name the key."""
import dataclasses
import os

import pytest

from vitpe.config import TrainConfig, build_parser, parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the defaults of tools/train.py before the config existed (75d2ea8), under their current names
OLD_DEFAULTS = {
    'model': None, 'model_kwargs': {}, 'data': 'synthetic:position', 'img_size': 64, 'train_samples': None,
    'val_samples': None, 'epochs': 10, 'batch_size': 64, 'opt': 'adamw', 'lr': 1e-3, 'weight_decay': 0.05,
    'sched': 'cosine', 'warmup_steps': 50, 'min_lr': 1e-5, 'clip_grad': 1.0, 'smoothing': 0.0, 'mixup': 0.0,
    'cutmix': 0.0, 'model_ema': False, 'model_ema_decay': 0.998, 'amp': False, 'workers': 0, 'seed': 0,
    'output': 'runs/train', 'resume': None, 'initial_checkpoint': None, 'max_steps_per_epoch': None, 'quiet': False,
}
# options added for real data (issue 14): their defaults leave training as it was (no augmentation beyond
# random-resized crop and flip, no drop path, no layer decay, one micro-batch per update)
NEW_DEFAULTS = {
    'aa': None, 'color_jitter': 0.0, 'scale': [0.08, 1.0], 'ratio': [3 / 4, 4 / 3], 'hflip': 0.5, 'vflip': 0.0,
    'reprob': 0.0, 'remode': 'pixel', 'recount': 1, 'train_interpolation': 'bilinear', 'interpolation': None,
    'crop_pct': None, 'val_fraction': 0.0, 'split_seed': 0, 'classes': None, 'aug_repeats': 0, 'drop_path': 0.0,
    'layer_decay': None, 'grad_accum_steps': 1, 'warmup_epochs': None, 'lr_base': None, 'lr_base_size': 256,
    'bce_loss': False, 'bce_target_thresh': None, 'channels_last': False, 'pretrained': False,
    'pretrained_path': None,
    'num_frames': None, 'inflation': 'central',  # video (issue 11)
    'drop_path_mode': 'linear', 'opt_eps': None,
}


def test_defaults_are_the_old_ones_and_every_field_is_an_option():
    assert TrainConfig().to_dict() == {**OLD_DEFAULTS, **NEW_DEFAULTS}
    assert parse_config(['--model', 'm']) == TrainConfig(model='m')
    help_text = build_parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        flag = '--' + f.name.replace('_', '-')
        assert (flag in help_text) != f.metadata['hidden'], flag


def test_cli_overrides_yaml_overrides_defaults(tmp_path):
    cfg = tmp_path / 'cfg.yaml'
    cfg.write_text('model: vitpe_tiny_patch16_sincos_224\nepochs: 5\nimg_size: 32\nlr: 1e-3\namp: true\n'
                   'model_kwargs: {depth: 2}\n')
    c = parse_config(['--config', str(cfg), '--epochs', '1', '--no-amp', '--model-kwargs', 'depth=3', 'act="x"'])
    assert (c.model, c.epochs, c.img_size, c.lr, c.amp, c.batch_size) == ('vitpe_tiny_patch16_sincos_224', 1, 32,
                                                                         0.001, False, 64)
    assert c.model_kwargs == {'depth': 3, 'act': 'x'}
    assert TrainConfig.from_yaml(str(cfg), epochs=7).epochs == 7


def test_unknown_keys_and_wrong_types_name_the_key(tmp_path):
    cfg = tmp_path / 'cfg.yaml'
    cfg.write_text('modle: x\n')
    with pytest.raises(ValueError, match=r"unknown keys \['modle'\]"):
        parse_config(['--config', str(cfg)])
    for text, message in [('epochs: ten\n', "epochs must be int, got str 'ten'"),
                          ('epochs: 2.5\n', 'epochs must be int, got float 2.5'),
                          ('img_size: true\n', 'img_size must be int, got bool True'),
                          ('amp: 1\n', 'amp must be bool, got int 1'),
                          ('lr: fast\n', "lr must be float, got str 'fast'"),
                          ('train_samples: [1]\n', r'train_samples must be int or null, got list \[1\]'),
                          ('model_kwargs: 3\n', 'model_kwargs must be dict, got int 3'),
                          ('- a list\n', 'must hold a mapping of option: value, not a list')]:
        cfg.write_text(text)
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_yaml(str(cfg))


def test_deprecated_names_still_work_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning, match='--label-smoothing is deprecated; use --smoothing'):
        assert parse_config(['--model', 'm', '--label-smoothing', '0.1']).smoothing == 0.1
    with pytest.warns(FutureWarning, match='--finetune is deprecated; use --initial-checkpoint'):
        assert parse_config(['--finetune', 'a.pth']).initial_checkpoint == 'a.pth'
    cfg = tmp_path / 'cfg.yaml'
    cfg.write_text('model: m\nlabel_smoothing: 0.2\nfinetune: b.pth\n')
    with pytest.warns(FutureWarning) as caught:
        c = parse_config(['--config', str(cfg), '--smoothing', '0.3'])
    assert sorted(str(w.message).split(': ')[1] for w in caught) == [
        'finetune is deprecated; use initial_checkpoint', 'label_smoothing is deprecated; use smoothing']
    assert (c.smoothing, c.initial_checkpoint) == (0.3, 'b.pth')  # the command line still wins
    with pytest.raises(ValueError, match='gives both label_smoothing and smoothing'), pytest.warns(FutureWarning):
        TrainConfig.from_dict({'label_smoothing': 0.1, 'smoothing': 0.2})


def test_command_line_errors_exit_2(capsys):
    for argv, message in [([], '--model is required'), (['--model', 'm', '--epochs', 'x'], "invalid int value: 'x'"),
                          (['--model', 'm', '--model-kwargs', '{"depth": }'], '--model-kwargs is not valid JSON'),
                          (['--model', 'm', '--model-kwargs', 'depth'], 'expects key=value or a JSON object')]:
        with pytest.raises(SystemExit) as e:
            parse_config(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_shipped_training_config_loads():
    cfg = parse_config(['--config', os.path.join(ROOT, 'configs', 'train_micro_rope_mixed_position_64.yaml')])
    assert (cfg.model, cfg.model_kwargs, cfg.img_size, cfg.epochs) == ('vitpe_micro_patch16_rope_mixed_64', {}, 64, 15)
    assert cfg.resume is None and parse_config(['--model', 'm', '--resume']).resume == 'auto'


def test_list_options_from_the_command_line_and_yaml(tmp_path):
    with pytest.warns(FutureWarning, match='--label-smoothing is deprecated'):
        c = parse_config(['--model', 'm', '--scale', '0.35', '1', '--classes', 'a', 'b', '--label-smoothing', '0.1'])
    assert c.scale == [0.35, 1.0] and c.classes == ['a', 'b'] and c.smoothing == 0.1
    assert TrainConfig.from_dict({'ratio': [1, 2]}).ratio == [1.0, 2.0]
    with pytest.raises(ValueError, match=r"scale\[1\] must be float, got str 'x'"):
        TrainConfig.from_dict({'scale': [0.1, 'x']})


def test_options_that_replace_each_other(tmp_path):
    """--lr on the command line replaces a config's lr_base (and --warmup-steps its warmup_epochs); both in one
    source, or two sources of the starting weights, are errors that name both."""
    cfg = tmp_path / 'cfg.yaml'
    cfg.write_text('model: m\nlr_base: 5.0e-4\nwarmup_epochs: 5\n')
    c = parse_config(['-c', str(cfg), '--lr', '1e-3', '--warmup-steps', '7'])
    assert (c.lr, c.lr_base, c.warmup_steps, c.warmup_epochs) == (1e-3, None, 7, None)
    c = parse_config(['-c', str(cfg)])
    assert (c.lr_base, c.warmup_epochs) == (5e-4, 5.0)
    assert TrainConfig.from_yaml(str(cfg), lr=2e-3).lr_base is None
    assert parse_config(['-c', str(cfg), '--lr-base', '1e-3']).lr_base == 1e-3
    assert 'replaces the config\'s lr_base' in ' '.join(build_parser().format_help().split())
    cfg.write_text('model: m\nlr: 1.0e-3\nlr_base: 5.0e-4\n')
    with pytest.raises(ValueError, match=r"config .* sets both lr and lr_base; lr_base would replace lr"):
        parse_config(['-c', str(cfg)])
    with pytest.raises(ValueError, match='sets both warmup_steps and warmup_epochs'):
        TrainConfig.from_dict({'warmup_steps': 3, 'warmup_epochs': 1})
    with pytest.raises(ValueError, match=r"--pretrained / --pretrained-path \(w.pth\) and --initial-checkpoint "
                                         r"\(a.pth\) both give the starting weights"):
        parse_config(['--model', 'm', '--pretrained-path', 'w.pth', '--initial-checkpoint', 'a.pth'])
    with pytest.raises(ValueError, match="--pretrained / --pretrained-path .* and --initial-checkpoint"):
        TrainConfig(model='m', pretrained=True, initial_checkpoint='a.pth')


def test_command_line_gives_both_of_a_pair_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(['--model', 'm', '--lr', '1e-3', '--lr-base', '5e-4'])
    assert e.value.code == 2 and '--lr and --lr-base both given' in capsys.readouterr().err


@pytest.mark.parametrize('key,value,message', [('grad_accum_steps', 0, 'grad_accum_steps must be 1 or more, got 0'),
                                               ('crop_pct', 0.0, r'crop_pct must be positive .*, got 0.0'),
                                               ('crop_pct', -0.5, r'crop_pct must be positive .*, got -0.5')])
def test_values_no_training_can_use_are_config_errors(key, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({key: value})
