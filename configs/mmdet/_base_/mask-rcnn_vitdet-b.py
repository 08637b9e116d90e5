# Mask R-CNN with a vitpe ViT-B backbone, ViTDet's model (Li et al. 2022; mmdetection 3.3's
# projects/ViTDet/configs/vitdet_mask-rcnn_vit-b-mae_lsj-100e.py over configs/_base_/models/
# mask-rcnn_r50_fpn.py): window attention 14 with global blocks 2, 5, 8, 11, drop path 0.1, the
# simple feature pyramid (strides 4-64, LN), an RPN with 2 convs, the 4conv1fc box head and the mask
# head with LN. Written out (not mmdet::_base_/...) because mmengine 0.10.7 resolves package-scoped
# bases with pkg_resources, which setuptools >= 81 no longer has.
custom_imports = dict(imports=['vitpe.integrations.mm'], allow_failed_imports=False)

norm_cfg = dict(type='LN2d', requires_grad=True)
rcnn_nms = dict(type='nms', iou_threshold=0.5)
rpn_nms = dict(type='nms', iou_threshold=0.7)

model = dict(
    type='MaskRCNN',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_mask=True,
        pad_size_divisor=32,
        batch_augments=[dict(type='BatchFixedSizePad', size=(1024, 1024), pad_mask=True)]),
    backbone=dict(
        type='VitpeBackbone',
        model='vitpe_base_patch16_ape_224',
        img_size=1024,              # tables resized to the 64 x 64 grid of 1024 px
        window_size=14,
        global_blocks=(2, 5, 8, 11),
        out_indices=(-1,),
        drop_path_rate=0.1,
        checkpoint=None),           # a vitpe classification checkpoint of the same model
    neck=dict(type='VitpeSimpleFPN', in_channels=768, out_channels=256, strides=(4, 8, 16, 32, 64), norm='ln'),
    rpn_head=dict(
        type='RPNHead',
        in_channels=256,
        feat_channels=256,
        num_convs=2,
        anchor_generator=dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                              strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0], target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    roi_head=dict(
        type='StandardRoIHead',
        bbox_roi_extractor=dict(type='SingleRoIExtractor', out_channels=256, featmap_strides=[4, 8, 16, 32],
                                roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0)),
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            norm_cfg=norm_cfg,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                            target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_class_agnostic=False,
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        mask_roi_extractor=dict(type='SingleRoIExtractor', out_channels=256, featmap_strides=[4, 8, 16, 32],
                                roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0)),
        mask_head=dict(
            type='FCNMaskHead',
            num_convs=4,
            in_channels=256,
            conv_out_channels=256,
            norm_cfg=norm_cfg,
            num_classes=80,
            loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))),
    train_cfg=dict(
        rpn=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                          match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(type='RandomSampler', num=256, pos_fraction=0.5, neg_pos_ub=-1,
                         add_gt_as_proposals=False),
            allowed_border=-1,
            pos_weight=-1,
            debug=False),
        rpn_proposal=dict(nms_pre=2000, max_per_img=1000, nms=rpn_nms, min_bbox_size=0),
        rcnn=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                          match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1,
                         add_gt_as_proposals=True),
            mask_size=28,
            pos_weight=-1,
            debug=False)),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=rpn_nms, min_bbox_size=0),
        rcnn=dict(score_thr=0.05, nms=rcnn_nms, max_per_img=100, mask_thr_binary=0.5)))
