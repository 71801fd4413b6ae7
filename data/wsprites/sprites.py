"""Sprite sources for W-Sprites: LPC layer sheets from a folder, or the built-in drawer.

A character is one choice per layer, alpha-composited body, (eyes), bottomwear, (shoes),
topwear, hair (SPEC §1.2). Only the 72 cells the generator shows are cut out of each
sheet: 9 animations × 8 frames, each a 64×64 RGBA cell.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from utils.errors import GlassError
from utils.files import sha256_of_file

CELL_SIZE = 64
REQUIRED_LAYERS = ("body", "bottomwear", "topwear", "hair")
OPTIONAL_LAYERS = ("eyes", "shoes")
COMPOSITING_ORDER = ("body", "eyes", "bottomwear", "shoes", "topwear", "hair")
# The generator reads rows 0..15 only, so a sheet needs at least 16 rows of 13 columns.
MIN_SHEET_WIDTH, MIN_SHEET_HEIGHT = 13 * CELL_SIZE, 16 * CELL_SIZE

# Rows of each 4-row block, SPEC §1.2: back, left, front, right.
_VIEW_OFFSET = {"left": 1, "front": 2, "right": 3}
_BLOCK_START = {"spellcast": 0, "walk": 8, "slash": 12}
_COLUMNS = {
    "walk": (8, 1, 2, 3, 4, 5, 6, 7),
    "spellcast": (0, 1, 2, 3, 4, 5, 4, 6),
    "slash": (0, 1, 2, 3, 4, 5, 4, 0),
}
# Local action id → (sheet row, the 8 sheet columns), in the id order of SPEC §1.2.
ANIMATION_CELLS: Tuple[Tuple[int, Tuple[int, ...]], ...] = tuple(
    (_BLOCK_START[kind] + _VIEW_OFFSET[view], _COLUMNS[kind])
    for kind, view in (("walk", "front"), ("walk", "left"), ("walk", "right"),
                       ("spellcast", "front"), ("spellcast", "left"), ("spellcast", "right"),
                       ("slash", "front"), ("slash", "left"), ("slash", "right"))
)


def cut_animation_cells(sheet: np.ndarray) -> np.ndarray:
    """(9, 8, 64, 64, 4) uint8: the frames of the nine animations cut from an RGBA sheet."""
    cells = np.empty((len(ANIMATION_CELLS), 8, CELL_SIZE, CELL_SIZE, 4), dtype=np.uint8)
    for animation, (row, columns) in enumerate(ANIMATION_CELLS):
        for frame, column in enumerate(columns):
            cells[animation, frame] = sheet[row * CELL_SIZE:(row + 1) * CELL_SIZE,
                                            column * CELL_SIZE:(column + 1) * CELL_SIZE]
    return cells


def alpha_composite(layers: Sequence[np.ndarray]) -> np.ndarray:
    """Porter-Duff 'over' of RGBA uint8 arrays of one shape, the first at the bottom."""
    color = np.zeros(layers[0].shape[:-1] + (3,), dtype=np.float32)
    alpha = np.zeros(layers[0].shape[:-1] + (1,), dtype=np.float32)
    for layer in layers:
        layer_alpha = layer[..., 3:4].astype(np.float32) / 255.0
        # Premultiplied colours make 'over' a plain weighted sum.
        color = layer[..., :3].astype(np.float32) * layer_alpha + color * (1.0 - layer_alpha)
        alpha = layer_alpha + alpha * (1.0 - layer_alpha)
    safe_alpha = np.where(alpha > 0, alpha, 1.0)
    rgb = np.where(alpha > 0, color / safe_alpha, 0.0)
    return np.concatenate([np.rint(rgb), np.rint(alpha * 255.0)], axis=-1).astype(np.uint8)


def character_choices(character_id: int, choices_per_layer: Sequence[int]) -> Tuple[int, ...]:
    """The variant index of each layer for a character id (mixed radix, last layer fastest)."""
    total = int(np.prod(choices_per_layer))
    if not 0 <= character_id < total:
        raise ValueError(f"character id {character_id} outside [0, {total})")
    choices = []
    for count in reversed(choices_per_layer):
        choices.append(character_id % count)
        character_id //= count
    return tuple(reversed(choices))


class SpriteSource:
    """Layer sheets by (layer, variant index); `layers` lists the layers in compositing order."""

    layers: Tuple[str, ...]

    def variant_count(self, layer: str) -> int:
        raise NotImplementedError

    def layer_cells(self, layer: str, variant: int) -> np.ndarray:
        """(9, 8, 64, 64, 4) uint8 animation cells of one layer variant."""
        raise NotImplementedError

    def identity(self) -> Dict:
        """What makes two sources draw the same characters (stored in the dataset metadata)."""
        raise NotImplementedError

    def character_cells(self, choices: Sequence[int]) -> np.ndarray:
        """(9, 8, 64, 64, 4) uint8 animation cells of the character with these layer choices."""
        return alpha_composite([self.layer_cells(layer, variant) for layer, variant in zip(self.layers, choices)])


class BuiltinSpriteSource(SpriteSource):
    """Sheets drawn by `data.wsprites.builtin` (no art files needed)."""

    def __init__(self, layers: Sequence[str] = REQUIRED_LAYERS):
        from data.wsprites import builtin

        unknown = [layer for layer in layers if layer not in builtin.BUILTIN_LAYERS]
        if unknown:
            raise GlassError(f"the built-in sprite source draws only the layers {builtin.BUILTIN_LAYERS}, "
                             f"not {unknown}; use --sprites-dir for other layers")
        self.layers = tuple(layer for layer in COMPOSITING_ORDER if layer in layers)
        self._builtin = builtin

    def variant_count(self, layer: str) -> int:
        return self._builtin.BUILTIN_VARIANTS

    @lru_cache(maxsize=None)
    def layer_cells(self, layer: str, variant: int) -> np.ndarray:
        return cut_animation_cells(self._builtin.draw_layer_sheet(layer, variant))

    def identity(self) -> Dict:
        return {"kind": "builtin", "version": self._builtin.BUILTIN_VERSION, "layers": list(self.layers)}


def _numbered_pngs(folder: str) -> List[str]:
    names = [name for name in os.listdir(folder) if re.fullmatch(r"\d+\.png", name, flags=re.IGNORECASE)]
    return sorted(names, key=lambda name: int(name.split(".")[0]))


def read_lpc_sheet(path: str) -> np.ndarray:
    """An LPC sheet as (height, width, 4) uint8 RGBA; errors name the file."""
    try:
        with Image.open(path) as image:
            sheet = np.asarray(image.convert("RGBA"))
    except (OSError, ValueError) as error:
        raise GlassError(f"{path}: cannot read the sprite sheet ({error})") from None
    height, width = sheet.shape[:2]
    if width < MIN_SHEET_WIDTH or height < MIN_SHEET_HEIGHT:
        raise GlassError(f"{path}: a sprite sheet must be at least {MIN_SHEET_WIDTH}×{MIN_SHEET_HEIGHT} px "
                         f"(LPC layout, 64×64 cells), got {width}×{height}")
    return sheet


class LPCDirectorySource(SpriteSource):
    """Layer sheets from a folder with one sub-folder per layer holding `N.png` files.

    The first `max_choices` files of each layer (by number) are used. Every sheet is read
    and checked when the source is made, so a bad file stops the run before any output.
    """

    def __init__(self, root: str, layers: Sequence[str] = REQUIRED_LAYERS, max_choices: int = 6):
        if not os.path.isdir(root):
            raise GlassError(f"--sprites-dir {root}: no such folder")
        unknown = [layer for layer in layers if layer not in COMPOSITING_ORDER]
        if unknown:
            raise GlassError(f"unknown sprite layers {unknown}; known: {COMPOSITING_ORDER}")
        missing = [layer for layer in REQUIRED_LAYERS if layer not in layers]
        if missing:
            raise GlassError(f"the layers {missing} are required (a character is body, bottomwear, topwear, hair)")
        self.root = root
        self.layers = tuple(layer for layer in COMPOSITING_ORDER if layer in layers)
        self.files: Dict[str, List[str]] = {}
        for layer in self.layers:
            folder = os.path.join(root, layer)
            if not os.path.isdir(folder):
                raise GlassError(f"{folder}: missing layer folder (expected {layer}/0.png, {layer}/1.png, ...)")
            names = _numbered_pngs(folder)[:max_choices]
            if not names:
                raise GlassError(f"{folder}: no numbered sheets (expected 0.png, 1.png, ...)")
            self.files[layer] = [os.path.join(folder, name) for name in names]
        self._cells = {(layer, variant): cut_animation_cells(read_lpc_sheet(path))
                       for layer, paths in self.files.items() for variant, path in enumerate(paths)}

    def variant_count(self, layer: str) -> int:
        return len(self.files[layer])

    def layer_cells(self, layer: str, variant: int) -> np.ndarray:
        return self._cells[(layer, variant)]

    def identity(self) -> Dict:
        return {
            "kind": "lpc-directory",
            "layers": list(self.layers),
            "files": {layer: [os.path.basename(path) for path in paths] for layer, paths in self.files.items()},
            "sha256": {layer: [sha256_of_file(path) for path in paths] for layer, paths in self.files.items()},
        }
