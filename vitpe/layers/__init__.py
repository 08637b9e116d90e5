from .attention import Attention, set_attention_backend
from .block import Block
from .patch_embed import PatchEmbed
