from .vision_transformer import VisionTransformer
from .convert import checkpoint_filter_fn
from .zoo import ZOO, zoo_table
