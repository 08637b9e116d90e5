# UPerNet with a vitpe ViT-B backbone, mmsegmentation 1.2's ViT model (configs/_base_/models/
# upernet_vit-b16_ln_mln.py as configs/vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py uses
# it): the maps of blocks 2, 5, 8, 11 with global attention in every block (as mmseg's
# VisionTransformer; window attention is a backbone option), MultiLevelNeck (x4, x2, x1, /2),
# UPerHead and an auxiliary FCNHead on the last map, 150 ADE20K classes. Written out (not
# mmseg::_base_/...) because mmengine 0.10.7 resolves package-scoped bases with pkg_resources, which
# setuptools >= 81 no longer has.
custom_imports = dict(imports=['vitpe.integrations.mm'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=(512, 512)),
    backbone=dict(
        type='VitpeBackbone',
        model='vitpe_base_patch16_ape_224',
        img_size=512,               # tables resized to the 32 x 32 grid of 512 px
        window_size=None,
        out_indices=(2, 5, 8, 11),
        drop_path_rate=0.0,
        checkpoint=None),           # a vitpe classification checkpoint of the same model
    neck=dict(type='MultiLevelNeck', in_channels=[768, 768, 768, 768], out_channels=768, scales=[4, 2, 1, 0.5]),
    decode_head=dict(
        type='UPerHead',
        in_channels=[768, 768, 768, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=768,
        in_index=3,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
