"""Bridges to other frameworks, each imported on demand (``import vitpe`` needs none of them):
``vitpe.integrations.mm`` registers vitpe's dense backbone and pyramid in mmdetection / mmsegmentation."""
