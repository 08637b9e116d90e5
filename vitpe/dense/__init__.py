"""Detection and segmentation with vitpe backbones (ViTDet): window attention in the trunk, a simple feature
pyramid, and torchvision heads built by name."""
from .backbone import DenseBackbone, ViTBackbone, build_backbone, vitdet_global_blocks
from .pyramid import SimpleFeaturePyramid
from .detection import DETECTORS, build_detector
from .segmentation import SEGMENTERS, SemanticFPNHead, Segmenter, UPerHead, build_segmenter
