# Mask R-CNN, ViTDet recipe, vitpe ViT-B with the 'ape' scheme
_base_ = ['./_base_/mask-rcnn_vitdet-b.py', './_base_/lsj-100e_coco-instance.py']
model = dict(backbone=dict(model='vitpe_base_patch16_ape_224'))
