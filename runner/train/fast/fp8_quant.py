"""Row-wise FP8 (e4m3) quantization of activations for fp8_lora: t / scale with scale = amax of the
row / 448, one float32 scale per row.

On a GPU this is one Triton kernel launch per activation (a program per row: the row's amax, then
the scaled row as float8), and the result is shared by the projections that read the same input
(q, k and v; gate and up): each call after the first reuses it. Both matter because the step is
close to host-bound at these sizes: a torch.compile'd function spends its guards and several
launches per call, which measured slower than the bf16 matmul it was meant to speed up on the
4096-wide projections (bench/fp8_check.py part b). Elsewhere (CPU, no Triton) the eager version.
The two agree bit for bit: the scale is amax times the same float32 constant, the division is IEEE
round-to-nearest in both, and the kernel rounds to float8 with torch's own integer algorithm
(tests/test_fp8.py runs the kernel in Triton's CPU interpreter against the eager version;
bench/fp8_check.py part q compares them on the GPU)."""

from __future__ import annotations

import weakref

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max      # 448
INV_FP8_MAX = 1.0 / FP8_MAX         # the scale is amax times this float32 constant, in both versions
EPS = 1e-12                         # an all-zero row gets scale EPS / 448, not 0 (no division by zero)


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t / scale as float8 e4m3, scale [rows, 1] float32) with scale = amax of the row / 448."""
    t = t.contiguous().float()   # the FP8 result keeps t's layout, and _scaled_mm wants rows contiguous
    amax = t.abs().amax(dim=-1, keepdim=True)
    scale = amax.clamp(min=EPS) * INV_FP8_MAX   # not "/ 448": CUDA divides by a scalar as this product
    return (t / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


_KERNEL: list = []   # [the Triton kernel] once built, [None] where Triton is missing


def _triton_kernel():
    if _KERNEL:
        return _KERNEL[0]
    try:
        import triton
        import triton.language as tl
    except ImportError:
        _KERNEL.append(None)
        return None

    @triton.jit
    def quantize_kernel(x_ptr, q_ptr, s_ptr, cols, x_stride, eps, fmax, inv_fmax, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * x_stride
        q_row = q_ptr + row * cols
        amax = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, cols, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            v = tl.load(x_row + offs, mask=offs < cols, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(v))
        scale = tl.maximum(tl.max(amax, axis=0), eps) * inv_fmax
        tl.store(s_ptr + row, scale)
        for start in range(0, cols, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            v = tl.load(x_row + offs, mask=offs < cols, other=0.0).to(tl.float32)
            q = tl.minimum(tl.maximum(tl.math.div_rn(v, scale), -fmax), fmax)
            # float32 -> float8 e4m3fn bits, rounding to nearest even: c10's fp8e4m3fn_from_fp32_value
            # in integer arithmetic (int64: uint32 wrap-around is an explicit mask), the same on the
            # GPU and in Triton's CPU interpreter (whose float8 cast is not this rounding)
            bits = q.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
            f = bits & 0x7FFFFFFF
            small = ((tl.abs(q) + 16384.0).to(tl.int32, bitcast=True).to(tl.int64) - (141 << 23)) & 0xFF
            normal = (((f + 0xC407FFFF + ((f >> 20) & 1)) & 0xFFFFFFFF) >> 20) & 0xFF
            code = tl.where(f >= (1087 << 20), 0x7F, tl.where(f < (121 << 23), small, normal))
            tl.store(q_row + offs, (code | (((bits >> 31) & 1) << 7)).to(tl.uint8), mask=offs < cols)

    _KERNEL.append(quantize_kernel)
    return quantize_kernel


def quantize_triton(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """quantize_rows as one kernel launch on a CUDA tensor [rows, cols]; None where Triton is missing
    or its kernel did not build (then the callers quantize in eager PyTorch)."""
    kernel = _triton_kernel()
    if kernel is None:
        return None
    if t.stride(-1) != 1:
        t = t.contiguous()
    rows, cols = t.shape
    q = torch.empty((rows, cols), dtype=FP8, device=t.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=t.device)
    bits = q.view(torch.uint8)
    block = min(4096, max(16, 1 << (cols - 1).bit_length()))
    try:
        kernel[(rows,)](t, bits, scale, cols, t.stride(0), EPS, FP8_MAX, INV_FP8_MAX, BLOCK=block,
                        num_warps=8 if block >= 2048 else 4)
    except Exception as err:  # noqa: BLE001 - Triton's build errors share no base class
        if block in _BUILT:
            raise
        import warnings   # the first launch of a block size builds it: a Triton that cannot, said once

        warnings.warn(f"FP8 activation quantization runs in eager PyTorch (slower): the Triton kernel did not "
                      f"build: {type(err).__name__}: {(str(err).splitlines() or [''])[0]}")
        _KERNEL[0] = None
        return None
    _BUILT.add(block)
    return q, scale


_BUILT: set = set()   # block sizes whose kernel has compiled and run once


class _Last:
    """The last activation quantized: a weak reference to the tensor it came from (the module input
    that q, k and v all receive), its version and shape, and the result."""
    source = None
    key = None
    result = None


_LAST = _Last()


def quantize(t: torch.Tensor, source: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rows of `t` [rows, cols]; with `source` (the tensor t is a view of), a repeat call for
    the same unchanged source returns the first call's result instead of quantizing again."""
    if source is not None and not torch.compiler.is_compiling():
        key = (source._version, tuple(t.shape), t.dtype)
        if _LAST.source is not None and _LAST.source() is source and _LAST.key == key:
            return _LAST.result
        result = quantize(t)
        _LAST.source, _LAST.key, _LAST.result = weakref.ref(source), key, result
        return result
    if t.is_cuda and not torch.compiler.is_compiling():
        result = quantize_triton(t)
        if result is not None:
            return result
    return quantize_rows(t)


def forget() -> None:
    """Drop the shared result (it holds a quantized activation until the next call)."""
    _LAST.source = _LAST.key = _LAST.result = None
