"""Built-in data: procedural scenes (``synthetic``), image folders (``folder``), clips (``clips``: moving shapes,
folders of frames)."""
from .synthetic import KINDS, TASKS, Scene, Shape, SyntheticShapes, make_scene, render
from .folder import build_dataset, collate_skip_none
from .clips import (CLIP_TASKS, ClipScene, FrameFolder, SyntheticClips, data_size, make_clip, render_clip,
                    with_frames)
