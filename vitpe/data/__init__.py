"""Built-in data: procedural scenes (``synthetic``) and image folders (``folder``)."""
from .synthetic import KINDS, TASKS, Scene, Shape, SyntheticShapes, make_scene, render
from .folder import build_dataset, collate_skip_none
