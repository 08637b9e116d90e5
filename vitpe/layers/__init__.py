from .attention import Attention
from .block import Block
from .patch_embed import PatchEmbed
