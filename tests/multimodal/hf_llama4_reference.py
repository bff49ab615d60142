"""transformers' `Llama4ImageProcessor` as a reference, run in a child interpreter.

The processor needs torchvision, which we replace by `torchvision_standin`. transformers decides once, when it
is first imported, whether torchvision exists, and the test process has imported it long before (conftest);
so the reference runs in a fresh interpreter that installs the stand-in first. Images are rebuilt there from
their (height, width, mode) description, so only small requests and the resulting tensors cross over.
"""

import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).parents[2]
SEED = 4321


@dataclass(frozen=True)
class ProcessorSettings:
    tile_size: int
    max_patches: int
    resize_to_max_canvas: bool = False


@dataclass(frozen=True)
class ImageSpec:
    height: int
    width: int
    mode: str = "RGB"


def random_image(spec: ImageSpec) -> Image.Image:
    """A deterministic noise image of the given size and mode ("RGB", "RGBA", "L" or "P")."""
    rng = np.random.default_rng(SEED + 7919 * spec.height + spec.width)
    if spec.mode == "P":
        image = Image.fromarray(rng.integers(0, 16, (spec.height, spec.width), dtype=np.uint8), mode="P")
        image.putpalette(rng.integers(0, 256, 16 * 3, dtype=np.uint8).tobytes())
        return image
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[spec.mode]
    pixels = rng.integers(0, 256, (spec.height, spec.width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=spec.mode)


def hf_reference(batches: list[tuple[ProcessorSettings, list[ImageSpec]]],
                 geometry: list[tuple[ProcessorSettings, int, int]], tmp_dir: Path) -> dict:
    """HF's outputs for each batch (one processor call on all its images) and for each geometry query.

    Returns {"batches": [(pixel_values, aspect_ratios)], "geometry": [((canvas_h, canvas_w), (new_h, new_w))]}.
    """
    request, result = tmp_dir / "request.pt", tmp_dir / "result.pt"
    torch.save({"batches": [(asdict(settings), [asdict(spec) for spec in specs]) for settings, specs in batches],
                "geometry": [(asdict(settings), height, width) for settings, height, width in geometry]}, request)
    child = subprocess.run([sys.executable, "-m", "tests.multimodal.hf_llama4_reference", str(request), str(result)],
                           cwd=REPO, capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"the HF reference process failed:\n{child.stderr}")
    return torch.load(result)


def _hf_processor(settings: dict):
    from transformers.models.llama4.image_processing_llama4 import Llama4ImageProcessor

    tile = settings["tile_size"]
    return Llama4ImageProcessor(size={"height": tile, "width": tile}, max_patches=settings["max_patches"],
                                resize_to_max_canvas=settings["resize_to_max_canvas"])


def _hf_geometry(settings: dict, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    # The same steps as Llama4ImageProcessor._preprocess, through HF's own functions.
    from transformers.image_utils import SizeDict
    from transformers.models.llama4 import image_processing_llama4 as hf

    tile = SizeDict(height=settings["tile_size"], width=settings["tile_size"])
    resolutions = torch.tensor(hf.find_supported_resolutions(max_num_chunks=settings["max_patches"], patch_size=tile))
    canvas = hf.get_best_fit((height, width), resolutions, resize_to_max_canvas=settings["resize_to_max_canvas"])
    target = canvas if settings["resize_to_max_canvas"] else (
        min(max(height, tile.height), canvas[0]), min(max(width, tile.width), canvas[1]))
    new_h, new_w = hf.get_max_res_without_distortion((height, width), target)
    return (int(canvas[0]), int(canvas[1])), (max(int(new_h), 1), max(int(new_w), 1))


def _main(request_path: str, result_path: str) -> None:
    from tests.multimodal import torchvision_standin

    torchvision_standin.install()
    request = torch.load(request_path)
    batches = []
    for settings, specs in request["batches"]:
        output = _hf_processor(settings)(images=[random_image(ImageSpec(**spec)) for spec in specs],
                                         return_tensors="pt")
        batches.append((output["pixel_values"], output["aspect_ratios"]))
    geometry = [_hf_geometry(settings, height, width) for settings, height, width in request["geometry"]]
    torch.save({"batches": batches, "geometry": geometry}, result_path)


if __name__ == "__main__":
    _main(*sys.argv[1:])
