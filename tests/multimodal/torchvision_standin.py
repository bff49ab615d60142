"""A minimal stand-in for `torchvision`, just enough to run transformers' `Llama4ImageProcessor` on PIL images.

Why it exists: transformers 5.23 ships the Llama 4 image processor for the torchvision backend only, and
torchvision cannot be installed beside our torch (its C extension is built for another torch). vlmserve itself
does not use torchvision; only the reference side of the parity tests needs HF's processor to run.

What it implements, with torchvision's own tensor semantics (torchvision/transforms/v2/functional/_geometry.py
and _misc.py): `resize` (antialiased bilinear; uint8 goes through torch's native uint8 kernel on AVX2/AVX512
CPUs and through float32 + round elsewhere, as `_do_native_uint8_resize_on_cpu` decides), `pad` (constant
mode, scalar or per-channel fill, `[left, top, right, bottom]`), `normalize` (mean/std cast to the image dtype,
then sub and div), and `InterpolationMode`. `pil_to_tensor` (imported by transformers' image_utils) and
`torchvision.io` (imported by its video_utils) are only names here; this path never calls them. `install()` must
run before transformers is first imported, since transformers decides once, at import, whether torchvision is
there.
"""

import enum
import importlib.machinery
import sys
import types

import torch
import torch.nn.functional as F

MIRRORED_VERSION = "0.28.0"  # the torchvision release paired with torch 2.13, whose source this follows
_NATIVE_UINT8_BILINEAR_CPUS = ("AVX2", "AVX512")


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def resize(image: torch.Tensor, size, interpolation=InterpolationMode.BILINEAR, max_size=None,
           antialias=True) -> torch.Tensor:
    """[..., C, H, W] -> [..., C, size[0], size[1]]; only the bilinear, explicit (height, width) case."""
    if interpolation != InterpolationMode.BILINEAR or max_size is not None or len(size) != 2:
        raise NotImplementedError(f"stand-in resize supports bilinear to (height, width) only, got "
                                  f"{interpolation}, size={size}, max_size={max_size}")
    *batch, channels, height, width = image.shape
    if (height, width) == tuple(size):
        return image
    flat = image.reshape(-1, channels, height, width)
    native = image.dtype in (torch.float32, torch.float64) or (
        image.dtype == torch.uint8 and image.device.type == "cpu"
        and torch.backends.cpu.get_cpu_capability() in _NATIVE_UINT8_BILINEAR_CPUS)
    source = flat if native else flat.to(torch.float32)
    resized = F.interpolate(source, size=list(size), mode="bilinear", align_corners=False, antialias=bool(antialias))
    if not native:
        resized = (resized if image.is_floating_point() else resized.round_()).to(image.dtype)
    return resized.reshape(*batch, channels, *size)


def pad(image: torch.Tensor, padding, fill=None, padding_mode="constant") -> torch.Tensor:
    """Constant padding by `[left, top, right, bottom]`; `fill` a number or one value per channel."""
    if padding_mode != "constant" or len(padding) != 4:
        raise NotImplementedError(f"stand-in pad supports 4-sided constant padding only, got {padding_mode}, {padding}")
    left, top, right, bottom = padding
    fill = 0 if fill is None else fill
    if isinstance(fill, (int, float)) or len(fill) == 1:
        value = float(fill if isinstance(fill, (int, float)) else fill[0])
        return F.pad(image, [left, right, top, bottom], mode="constant", value=value)
    output = F.pad(image, [left, right, top, bottom], mode="constant", value=0.0)
    fill = torch.tensor(fill, device=image.device).to(dtype=image.dtype).reshape(-1, 1, 1)
    if top > 0:
        output[..., :top, :] = fill
    if left > 0:
        output[..., :, :left] = fill
    if bottom > 0:
        output[..., -bottom:, :] = fill
    if right > 0:
        output[..., :, -right:] = fill
    return output


def normalize(image: torch.Tensor, mean, std, inplace: bool = False) -> torch.Tensor:
    """(image - mean) / std per channel, in the image's own dtype."""
    if not image.is_floating_point():
        raise TypeError(f"Input tensor should be a float tensor. Got {image.dtype}.")
    mean = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    image = image.sub_(mean) if inplace else image.sub(mean)
    return image.div_(std)


def pil_to_tensor(picture):
    raise NotImplementedError("the torchvision stand-in has no pil_to_tensor; the Llama 4 processor does not call it")


def install() -> None:
    """Put the stand-in modules in `sys.modules` under torchvision's names."""
    attributes = {
        "torchvision": {"__version__": MIRRORED_VERSION},
        "torchvision.io": {},
        "torchvision.transforms": {"InterpolationMode": InterpolationMode},
        "torchvision.transforms.functional": {"InterpolationMode": InterpolationMode, "pil_to_tensor": pil_to_tensor},
        "torchvision.transforms.v2": {},
        "torchvision.transforms.v2.functional": {
            "InterpolationMode": InterpolationMode, "resize": resize, "pad": pad, "normalize": normalize},
    }
    for name, members in attributes.items():
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
        module.__path__ = []
        module.__dict__.update(members)
        sys.modules[name] = module
    for name in attributes:
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, sys.modules[name])
