"""3×3 convolutions (stride 1, padding 1) by Winograd's minimal filtering F(4×4, 3×3), for the CPU.

The same convolution as `F.conv2d(x, w, b, padding=1)` — forward, input gradient and weight
gradient —, computed with 36 multiplications per 4×4 output tile and channel pair instead
of 144 (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016; the
transforms are their F(4×4, 3×3) ones, interpolation points 0, ±1, ±2, ∞, as cuDNN's and
NNPACK's). Per tile position ξ of the 6×6 transformed tile, the multiplications are one
matrix product over channels:

    V = Bᵀ d B (input tiles)    U = G w Gᵀ (kernels)    M_ξ = V_ξ U_ξ    y = Aᵀ M A

and the backward pass stays in the transformed domain: dM = A dy Aᵀ, the weight gradient is
Gᵀ (Σ_tiles V_ξᵀ dM_ξ) G, and the input gradient is this same forward pass applied to dy with
the kernel flipped and its channels swapped. So every pass does 4× fewer multiply-adds than a
direct convolution; the transforms are a few passes over memory. Optionally a following 2×2
average pooling is folded into the output transform (conv3×3 → avgpool(2) of SPEC's
down-sampling blocks): a 4×4 output tile pools to 2×2.

Results agree with the direct convolution to float32 rounding of a longer sum (relative error
about 1e-5 of the output's scale, against 1e-6 for the direct kernel; tests/model/ops/test_winograd.py);
float64 inputs agree to ~1e-13. `model.ops.conv2d` runs it, with `training.cpu_kernels` 'torch' or
'native', for the layers `eligible` accepts: 3×3, padding 1, at least `WINOGRAD_MIN_CHANNELS` input
and output channels (`WINOGRAD_POOLED_MIN_CHANNELS` with the pooling), where the products saved
outweigh the transforms (the per-layer figures are in README "Benchmarks").

The tile transforms (gathering 6×6 windows, Bᵀ·B, Aᵀ·A and its adjoint) run in
winograd_transforms.c with `native=True`, compiled on first use into ~/.cache/glass
(`build_native_transforms`); with `native=False`, or where no C compiler is found, the same
transforms run as PyTorch operations (slower). The products are `torch.bmm` (MKL / oneDNN).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

TILE = 4  # output tile m of F(m×m, 3×3)
WINDOW = TILE + 2  # input tile α = m + r − 1

# F(4, 3) with points 0, 1, −1, 2, −2, ∞ (Lavin & Gray 2016, §4.2).
_INPUT_TRANSFORM_T = (  # Bᵀ (6×6)
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
_KERNEL_TRANSFORM = (  # G (6×3)
    (1 / 4, 0, 0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0, 0, 1),
)
_OUTPUT_TRANSFORM_T = (  # Aᵀ (4×6)
    (1, 1, 1, 1, 1, 0),
    (0, 1, -1, 2, -2, 0),
    (0, 1, 1, 4, 4, 0),
    (0, 1, -1, 8, -8, 1),
)


# The smallest layers that Winograd runs: with fewer channels its transforms cost more than the products save
# (README "Benchmarks"); the pooled form competes with the direct strided kernel, 16 taps at a quarter of the positions.
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_POOLED_MIN_CHANNELS = 128
TRANSFORMS_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "winograd_transforms.c")
_NATIVE_DTYPES = {torch.float32: 0, torch.float64: 1}


class NativeTransforms:
    """The tile transforms of winograd_transforms.c, called through ctypes on dense CPU tensors."""

    def __init__(self, path: str):
        self.path = path
        library = ctypes.CDLL(path)
        size, pointer, flag = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        self._input = library.winograd_input_tiles
        self._input.argtypes = [pointer, pointer, flag] + [size] * 6 + [flag]
        self._output = library.winograd_output_from_tiles
        self._output.argtypes = [pointer, pointer, pointer, flag, flag] + [size] * 6 + [flag]
        self._gradient = library.winograd_output_gradient_tiles
        self._gradient.argtypes = [pointer, pointer, flag, flag] + [size] * 6 + [flag]
        for function in (self._input, self._output, self._gradient):
            function.restype = ctypes.c_int

    @staticmethod
    def _check(status: int, name: str) -> None:
        if status != 0:
            raise MemoryError(f"winograd_transforms.c: {name} could not allocate its buffers or start its threads")

    def input_tiles(self, images: torch.Tensor, tiles_high: int, tiles_wide: int) -> torch.Tensor:
        """images (N, H, W, C) dense → (36, N·th·tw, C)."""
        batch_size, height, width, channels = images.shape
        tiles = images.new_empty(WINDOW * WINDOW, batch_size * tiles_high * tiles_wide, channels)
        self._check(self._input(images.data_ptr(), tiles.data_ptr(), _NATIVE_DTYPES[images.dtype], batch_size, height,
                                width, channels, tiles_high, tiles_wide, torch.get_num_threads()), "input tiles")
        return tiles

    def output_from_tiles(self, products: torch.Tensor, bias: Optional[torch.Tensor], batch_size: int, height: int,
                          width: int, tiles_high: int, tiles_wide: int, pool: bool) -> torch.Tensor:
        """products (36, N·th·tw, K) dense → (N, K, H, W) in channels-last (not a view), H, W the output size
        (pooled already with `pool`)."""
        channels = products.shape[-1]
        images = torch.empty(batch_size, channels, height, width, dtype=products.dtype,
                             memory_format=torch.channels_last)
        bias_pointer = None if bias is None else bias.data_ptr()
        self._check(self._output(products.data_ptr(), bias_pointer, images.data_ptr(), _NATIVE_DTYPES[products.dtype],
                                 int(pool), batch_size, height, width, channels, tiles_high, tiles_wide,
                                 torch.get_num_threads()), "output transform")
        return images

    def output_gradient_tiles(self, gradient: torch.Tensor, tiles_high: int, tiles_wide: int,
                              pool: bool) -> torch.Tensor:
        """gradient (N, H, W, K) dense → (36, N·th·tw, K)."""
        batch_size, height, width, channels = gradient.shape
        tiles = gradient.new_empty(WINDOW * WINDOW, batch_size * tiles_high * tiles_wide, channels)
        self._check(self._gradient(gradient.data_ptr(), tiles.data_ptr(), _NATIVE_DTYPES[gradient.dtype], int(pool),
                                   batch_size, height, width, channels, tiles_high, tiles_wide,
                                   torch.get_num_threads()), "output-gradient tiles")
        return tiles


def _compiler_command(compiler: str, output: str) -> list:
    flags = ["-O3", "-shared", "-fPIC", "-pthread"]
    if platform.machine().lower() in ("x86_64", "amd64") and torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        flags += ["-mavx2", "-mfma"]  # PyTorch found AVX2 (or AVX-512, which implies both) on this CPU
    return [compiler, *flags, "-o", output, TRANSFORMS_SOURCE]


def cache_folder() -> str:
    """Where the compiled transforms are kept: ~/.cache/glass (under $XDG_CACHE_HOME where that is set)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "glass")


def build_native_transforms(rebuild: bool = False) -> str:
    """Compile winograd_transforms.c into `cache_folder()` (once per source, compiler and flags, or again
    with `rebuild`; written atomically, so concurrent processes are safe) and return the library's path.
    Raises OSError or subprocess.CalledProcessError when there is no C compiler or the build fails."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler found (cc, gcc or $CC)")
    with open(TRANSFORMS_SOURCE, "rb") as handle:
        source = handle.read()
    key = hashlib.sha256(source + " ".join(_compiler_command(compiler, "")).encode()).hexdigest()[:16]
    folder = cache_folder()
    path = os.path.join(folder, f"winograd_transforms-{key}.so")
    if os.path.isfile(path) and not rebuild:
        return path
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".winograd_transforms-", suffix=".so", dir=folder)
    os.close(descriptor)
    try:
        subprocess.run(_compiler_command(compiler, temporary), check=True, capture_output=True, text=True, timeout=600)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


@lru_cache(maxsize=None)
def native_transforms() -> Optional[NativeTransforms]:
    """The compiled transforms, built on first use; None (with one warning per process) where they cannot be
    built: then PyTorch operations do the same transforms, slower."""
    try:
        try:
            return NativeTransforms(build_native_transforms())
        except OSError:  # a cached library that does not load (a truncated or foreign file): built once more
            return NativeTransforms(build_native_transforms(rebuild=True))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or str(error)
        warnings.warn(f"Winograd convolutions: could not build {TRANSFORMS_SOURCE} ({detail.strip()[:300]}); "
                      f"using PyTorch's operations for its transforms (slower)", RuntimeWarning, stacklevel=2)
        return None


def _native_for(tensor: torch.Tensor, native: bool) -> Optional[NativeTransforms]:
    if not native or tensor.device.type != "cpu" or tensor.dtype not in _NATIVE_DTYPES:
        return None
    return native_transforms()


@lru_cache(maxsize=None)
def _transforms(dtype: torch.dtype, device: torch.device, pool: bool) -> Tuple[torch.Tensor, ...]:
    """The 2-D transforms as matrices on flattened tiles: (Bᵀ⊗Bᵀ) (36×36), (G⊗G) (36×9),
    (Aᵀ⊗Aᵀ) (16×36), or with `pool` the pooled output transform (4×36): each 2×2 block of the
    4×4 output tile averaged."""
    input_t = torch.tensor(_INPUT_TRANSFORM_T, dtype=torch.float64)
    kernel = torch.tensor(_KERNEL_TRANSFORM, dtype=torch.float64)
    output_t = torch.tensor(_OUTPUT_TRANSFORM_T, dtype=torch.float64)
    if pool:
        output_t = 0.5 * (output_t[0::2] + output_t[1::2])  # (2×6): rows 2i and 2i+1 averaged
    kinds = (torch.kron(input_t, input_t), torch.kron(kernel, kernel), torch.kron(output_t, output_t))
    return tuple(k.to(dtype=dtype, device=device) for k in kinds)


def _input_tiles(inputs: torch.Tensor, tiles_high: int, tiles_wide: int, native: bool) -> torch.Tensor:
    """Transformed input tiles V: (N, C, H, W) → (36, N·th·tw, C), padding 1 on top/left and
    zeros up to 4·t + 2 on the bottom/right."""
    batch_size, channels, height, width = inputs.shape
    library = _native_for(inputs, native)
    if library is not None:
        return library.input_tiles(inputs.permute(0, 2, 3, 1).contiguous(), tiles_high, tiles_wide)
    input_transform = _transforms(inputs.dtype, inputs.device, False)[0]
    padded = F.pad(inputs.permute(0, 2, 3, 1),
                   (0, 0, 1, TILE * tiles_wide + 1 - width, 1, TILE * tiles_high + 1 - height))
    windows = padded.unfold(1, WINDOW, TILE).unfold(2, WINDOW, TILE)  # (N, th, tw, C, 6, 6), a view
    windows = windows.permute(4, 5, 0, 1, 2, 3).reshape(WINDOW * WINDOW, -1)  # (36, N·th·tw·C)
    return (input_transform @ windows).view(WINDOW * WINDOW, batch_size * tiles_high * tiles_wide, channels)


def _kernel_tiles(weight: torch.Tensor) -> torch.Tensor:
    """Transformed kernels U: (K, C, 3, 3) → (36, C, K)."""
    out_channels, in_channels = weight.shape[:2]
    kernel_transform = _transforms(weight.dtype, weight.device, False)[1]
    return (kernel_transform @ weight.permute(2, 3, 1, 0).reshape(9, -1)).view(WINDOW * WINDOW, in_channels,
                                                                               out_channels)


def _output_from_tiles(products: torch.Tensor, shape: Tuple[int, int, int, int, int], pool: bool, native: bool,
                       bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = Aᵀ M A (+ bias): products M (36, N·th·tw, K) → (N, K, H', W') in channels-last, H' = H (or ⌊H/2⌋ with
    `pool`); shape (N, H, W, th, tw) of the convolution's input."""
    batch_size, height, width, tiles_high, tiles_wide = shape
    out_channels = products.shape[-1]
    library = _native_for(products, native)
    if library is not None:
        scale = 2 if pool else 1
        bias = None if bias is None else bias.to(products.dtype).contiguous()
        return library.output_from_tiles(products, bias, batch_size, height // scale, width // scale, tiles_high,
                                        tiles_wide, pool)
    output_transform = _transforms(products.dtype, products.device, pool)[2]
    size = TILE // 2 if pool else TILE
    tiles = (output_transform @ products.view(WINDOW * WINDOW, -1)).view(size, size, batch_size, tiles_high,
                                                                          tiles_wide, out_channels)
    outputs = tiles.permute(2, 3, 0, 4, 1, 5).reshape(batch_size, size * tiles_high, size * tiles_wide, out_channels)
    if pool:
        height, width = height // 2, width // 2
    if outputs.shape[1] != height or outputs.shape[2] != width:
        outputs = outputs[:, :height, :width].contiguous()
    if bias is not None:
        outputs = outputs + bias
    # a tensor of its own, not a view: the caller may modify it in place (VGG19's ReLU(inplace=True))
    return outputs.permute(0, 3, 1, 2).clone(memory_format=torch.channels_last)


def _output_gradient_tiles(grad_output: torch.Tensor, tiles_high: int, tiles_wide: int, pool: bool,
                           native: bool) -> torch.Tensor:
    """dM = A dy Aᵀ, the adjoint of `_output_from_tiles`: (N, K, H', W') → (36, N·th·tw, K)."""
    batch_size, out_channels, height, width = grad_output.shape
    library = _native_for(grad_output, native)
    if library is not None:
        return library.output_gradient_tiles(grad_output.permute(0, 2, 3, 1).contiguous(), tiles_high, tiles_wide, pool)
    output_transform = _transforms(grad_output.dtype, grad_output.device, pool)[2]
    size = TILE // 2 if pool else TILE
    gradient = grad_output.permute(0, 2, 3, 1)
    if height != size * tiles_high or width != size * tiles_wide:
        gradient = F.pad(gradient, (0, 0, 0, size * tiles_wide - width, 0, size * tiles_high - height))
    tiles = gradient.reshape(batch_size, tiles_high, size, tiles_wide, size, out_channels).permute(2, 4, 0, 1, 3, 5)
    return (output_transform.t() @ tiles.reshape(size * size, -1)).view(WINDOW * WINDOW, -1, out_channels)


def _tile_counts(height: int, width: int) -> Tuple[int, int]:
    return -(-height // TILE), -(-width // TILE)


def kernel_tiles_of(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The transformed kernels of `weight` (K, C, 3, 3) for the forward pass (36, C, K) and for the input
    gradient (36, K, C: the kernel flipped, channels swapped); `winograd_conv3x3` takes them precomputed
    for a frozen weight (VGG19's), which then costs nothing per call."""
    with torch.no_grad():
        return _kernel_tiles(weight), _kernel_tiles(weight.flip(2, 3).transpose(0, 1))


class _WinogradConvolution(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, weight, bias, pool, precomputed, native):  # type: ignore[override]
        batch_size, _, height, width = inputs.shape
        tiles_high, tiles_wide = _tile_counts(height, width)
        input_tiles = _input_tiles(inputs, tiles_high, tiles_wide, native)
        kernel_tiles = _kernel_tiles(weight) if precomputed is None else precomputed[0]
        ctx.flipped_kernel_tiles = None if precomputed is None else precomputed[1]
        shape = (batch_size, height, width, tiles_high, tiles_wide)
        outputs = _output_from_tiles(torch.bmm(input_tiles, kernel_tiles), shape, pool, native, bias)
        ctx.save_for_backward(input_tiles if weight.requires_grad else None, weight)
        ctx.configuration = (shape, pool, bias is not None, native)
        return outputs

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        input_tiles, weight = ctx.saved_tensors
        shape, pool, has_bias, native = ctx.configuration
        batch_size, height, width, tiles_high, tiles_wide = shape
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_input = grad_weight = grad_bias = None
        if need_input:
            # The input gradient of a stride-1, padding-1 3×3 convolution is the same convolution of the
            # output gradient with the flipped kernel, input and output channels swapped.
            flipped = ctx.flipped_kernel_tiles
            if flipped is None:
                flipped = _kernel_tiles(weight.flip(2, 3).transpose(0, 1))  # (36, K, C)
            grad_full = grad_output
            if pool:  # the gradient of the full-resolution convolution: avgpool(2)'s adjoint spreads dy/4 on 2×2
                grad_full = 0.25 * F.interpolate(grad_output, scale_factor=2, mode="nearest")
                if grad_full.shape[-2:] != (height, width):  # odd sizes: the last row / column was not pooled
                    grad_full = F.pad(grad_full, (0, width - grad_full.shape[-1], 0, height - grad_full.shape[-2]))
            products = torch.bmm(_input_tiles(grad_full, tiles_high, tiles_wide, native), flipped)
            grad_input = _output_from_tiles(products, shape, False, native)
        if need_weight:
            kernel_transform = _transforms(weight.dtype, weight.device, False)[1]
            grad_products = _output_gradient_tiles(grad_output, tiles_high, tiles_wide, pool, native)  # (36, P, K)
            grad_tiles = torch.bmm(input_tiles.transpose(1, 2), grad_products)  # (36, C, K)
            out_channels, in_channels = weight.shape[:2]
            grad_weight = (kernel_transform.t() @ grad_tiles.reshape(WINDOW * WINDOW, -1)).view(3, 3, in_channels,
                                                                                                out_channels)
            grad_weight = torch.empty_like(weight).copy_(grad_weight.permute(3, 2, 0, 1))  # the weight's layout
        if need_bias and has_bias:
            grad_bias = grad_output.sum(dim=(0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None, None


def winograd_conv3x3(inputs: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     pool: bool = False, kernel_tiles: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                     native: bool = True) -> torch.Tensor:
    """`F.conv2d(inputs, weight, bias, padding=1)` (then `F.avg_pool2d(·, 2)` with `pool`) by F(4×4, 3×3).

    inputs (N, C, H, W), weight (K, C, 3, 3), bias (K) or None → (N, K, H, W), or
    (N, K, ⌊H/2⌋, ⌊W/2⌋) with `pool`, in channels-last memory format. Differentiable in all three;
    `kernel_tiles`, `kernel_tiles_of(weight)` computed beforehand, only for a weight that needs no gradient.
    `native`: the tile transforms of winograd_transforms.c (CPU float32 / float64; PyTorch's operations
    where it cannot be built), or PyTorch's operations.
    """
    if weight.shape[-2:] != (3, 3) or inputs.dim() != 4 or inputs.shape[1] != weight.shape[1]:
        raise ValueError(f"winograd_conv3x3: expected inputs (N, C, H, W) and a (K, C, 3, 3) weight, got "
                         f"{tuple(inputs.shape)} and {tuple(weight.shape)}")
    if kernel_tiles is not None and weight.requires_grad:
        raise ValueError("winograd_conv3x3: precomputed kernel_tiles are for a weight that needs no gradient")
    return _WinogradConvolution.apply(inputs, weight, bias, pool, kernel_tiles, native)


def eligible(weight_shape: Sequence[int], padding: Tuple[int, int], down: int) -> bool:
    """Whether "convolution with a (K, C, kh, kw) weight and `padding`, then avgpool(`down`)" is one that
    `model.ops.conv2d` runs by Winograd: 3×3, padding 1, `down` 1 or 2, and wide enough."""
    out_channels, in_channels, kernel_height, kernel_width = weight_shape
    if (kernel_height, kernel_width) != (3, 3) or tuple(padding) != (1, 1) or down not in (1, 2):
        return False
    return min(in_channels, out_channels) >= (WINOGRAD_MIN_CHANNELS if down == 1 else WINOGRAD_POOLED_MIN_CHANNELS)


def applies(inputs: torch.Tensor) -> bool:
    """Whether these inputs can go through `winograd_conv3x3` here: CPU float32 / float64, not under torch.compile."""
    return (inputs.device.type == "cpu" and inputs.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling())


class FrozenKernelTiles:
    """`kernel_tiles_of(weight)` for a weight that needs no gradient (VGG19's), kept until the weight changes
    (in place, as load_state_dict does, or moved); None for a weight that is trained."""

    def __init__(self):
        self._key: Optional[Tuple[int, int, torch.dtype]] = None
        self._tiles: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def get(self, weight: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        if weight.requires_grad:
            return None
        key = (weight._version, weight.data_ptr(), weight.dtype)
        if self._key != key:
            self._key, self._tiles = key, kernel_tiles_of(weight)
        return self._tiles
