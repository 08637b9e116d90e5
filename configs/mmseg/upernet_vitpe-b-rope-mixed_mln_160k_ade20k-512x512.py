# UPerNet, mmseg's ViT recipe, vitpe ViT-B with the 'rope_mixed' scheme
_base_ = ['./_base_/upernet_vitpe-b_mln.py', './_base_/ade20k-512x512_160k.py']
model = dict(backbone=dict(model='vitpe_base_patch16_rope_mixed_224'))
