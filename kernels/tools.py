"""Compile and resource tooling for the kernel modules: what the GPU compiler makes of them, without a GPU.

Triton's interpreter accepts what the GPU compiler may reject (``tl.dot`` shapes, layouts, shared
memory). Here a module's launchers run on ``meta`` tensors inside ``kernels._triton.recorded_launches``,
so every launch a real call would make — the very arguments, tiles and warps — is recorded instead of
run, and each is compiled by Triton down to a cubin with the ``ptxas`` its wheel ships. The result
says, per kernel, the shared memory it needs, its warps and stages, and (when the wheel's
``cuobjdump`` is there) its registers per thread and stack bytes (register spills).

Needs a process *without* ``TRITON_INTERPRET=1`` (the interpreter replaces ``@triton.jit``)::

    python -c "from kernels import tools; print(tools.compile_gla())"
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import torch
import triton

from kernels import _triton

__all__ = ["compile_double_sparsity", "compile_gla", "compile_lightning", "compile_launches", "resource_usage"]

_DTYPE_NAMES = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
    torch.int8: "i8", torch.uint8: "u8", torch.int32: "i32", torch.int64: "i64", torch.bool: "i1",
}  # fmt: skip


def _meta(*shape, dtype):
    return torch.empty(*shape, device="meta", dtype=dtype)


def compile_gla(dtype: torch.dtype = torch.bfloat16, K: int = 128, V: int = 128, config=None, *, arch: int = 90,
                T: int = 4096) -> dict:  # fmt: skip
    """Every kernel of ``kernels.gla`` (forward and backward, initial and final states) for ``sm_<arch>``.

    Returns ``{kernel name: {"shared_bytes", "num_warps", "num_stages", "registers", "stack_bytes"}}``.
    """
    from kernels import gla

    cfg = (config or gla.DEFAULT_CONFIG).clipped(K, V)
    BH = 2
    q, k, g = (_meta(BH, T, K, dtype=dtype) for _ in range(3))
    v, do = _meta(BH, T, V, dtype=dtype), _meta(BH, T, V, dtype=dtype)
    states = _meta(BH, K, V, dtype=torch.float32)
    with _triton.recorded_launches() as launches:
        _, h, A, _ = gla._forward(q, k, v, g, states, 0.5, cfg)
        gla._backward(q, k, v, g, h, A, do, states, True, 0.5, cfg)
    return compile_launches(launches, arch=arch)


def compile_lightning(dtype: torch.dtype = torch.bfloat16, K: int = 128, V: int = 128, config=None, *,
                      arch: int = 90, T: int = 4096, chunk_size: int = 64, segments: int = 2) -> dict:  # fmt: skip
    """Every kernel of ``kernels.lightning`` (segmented forward and backward, with states) for ``sm_<arch>``.

    ``segments > 1`` includes the segment-state and segment-scan kernels; the fused dK/dV kernel is
    compiled when ``config.fused_dkdv`` is set. Returns what ``compile_gla`` returns.
    """
    from kernels import lightning

    cfg = config or lightning.DEFAULT_CONFIG
    BH = 2
    seg_len = triton.cdiv(triton.cdiv(T, segments), chunk_size) * chunk_size
    n_seg = triton.cdiv(T, seg_len)
    q, k = _meta(BH, T, K, dtype=dtype), _meta(BH, T, K, dtype=dtype)
    v, do = _meta(BH, T, V, dtype=dtype), _meta(BH, T, V, dtype=dtype)
    log2_decay = _meta(1, dtype=torch.float32)
    start = _meta(BH, K, V, dtype=torch.float32)
    common = dict(seg_len=seg_len, n_seg=n_seg, chunk_size=chunk_size, cfg=cfg)
    with _triton.recorded_launches() as launches:
        entry, _ = lightning._segment_entries(k, v, log2_decay, start, scale_b=1.0, reverse=False, **common)
        lightning._chunk_scan(q, k, v, log2_decay, entry, scale_a=0.5, scale_b=1.0, reverse=False,
                              store_final=True, **common)  # fmt: skip
        if cfg.fused_dkdv:
            lightning._dkdv(q, k, v, do, log2_decay, entry, scale=0.5, store_final=False, **common)
        else:
            lightning._chunk_scan(k, q, do, log2_decay, entry, scale_a=1.0, scale_b=0.5, reverse=True, **common)
    return compile_launches(launches, arch=arch)


def compile_launches(launches, *, arch: int = 90, sass_ops: tuple[str, ...] = ()) -> dict:
    """Compile recorded ``(kernel, args, kwargs)`` launches for ``sm_<arch>``.

    Arguments are specialised as Triton's launcher specialises them on a GPU: pointers (allocator
    memory) and integers divisible by 16 carry that divisibility, and integers equal to 1 become
    constants. Without that a stride looks unaligned and every load compiles scalar, so the report
    would describe code no GPU launch runs.

    Returns ``{kernel name: {"shared_bytes", "num_warps", "num_stages", "registers", "stack_bytes"}}``
    (a kernel launched again gets ``"name #2"``, ...); with ``sass_ops``, also ``"sass"``: how often
    each of those instruction names occurs in the disassembly (where ``cuobjdump`` is there).
    """
    if _triton.INTERPRETER:
        raise RuntimeError("compiling for a GPU needs a process without TRITON_INTERPRET=1 (the interpreter "
                           "replaces @triton.jit)")  # fmt: skip
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    results = {}
    for kernel, args, kwargs in launches:
        kwargs = dict(kwargs)
        options = {"num_warps": kwargs.pop("num_warps", 4), "num_stages": kwargs.pop("num_stages", 2)}
        signature, constexprs, attrs = {}, {}, {}
        for i, name in enumerate(kernel.arg_names):
            value = args[i] if i < len(args) else kwargs[name]
            if name in kwargs:
                signature[name], constexprs[name] = "constexpr", value
            elif isinstance(value, torch.Tensor):
                signature[name] = "*" + _DTYPE_NAMES[value.dtype]
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif isinstance(value, float):
                signature[name] = "fp32"
            elif value == 1:
                signature[name], constexprs[name] = "constexpr", 1
            else:
                signature[name] = "i32"
                if value % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
        cubin = compiled.asm.get("cubin")
        info = {"shared_bytes": compiled.metadata.shared, **options, **resource_usage(cubin)}
        sass = _cuobjdump(cubin, "-sass") if sass_ops else ""
        if sass:  # (absent where the wheel ships no cuobjdump)
            info["sass"] = {op: len(re.findall(op, sass)) for op in sass_ops}
        key, n = kernel.fn.__name__, 1
        while key in results:
            n += 1
            key = f"{kernel.fn.__name__} #{n}"
        results[key] = info
    return results


def compile_double_sparsity(*, arch: int = 90, S: int = 262144, B: int = 1, H: int = 32) -> dict:
    """Every launch of ``kernels.double_sparsity``'s benchmark path (int8 ``r = 16`` and fp16 ``r = 8``
    labels; sparse and dense attention; the offload gather), compiled for ``sm_<arch>``. Returns what
    ``compile_launches`` returns."""
    from kernels import double_sparsity as ds

    return compile_launches(ds.record_benchmark_launches(S=S, B=B, H=H), arch=arch)


def _cuobjdump(cubin, flag: str) -> str:
    """The output of the wheel's ``cuobjdump FLAG`` on a cubin ('' where the tool is missing)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not cubin or not os.path.exists(tool):
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, flag, f.name], capture_output=True, text=True).stdout


def resource_usage(cubin) -> dict:
    """Registers per thread and stack (spill) bytes of a cubin, from the ``cuobjdump`` Triton ships."""
    found = re.search(r"REG:(\d+) STACK:(\d+)", _cuobjdump(cubin, "-res-usage"))
    return {"registers": int(found.group(1)), "stack_bytes": int(found.group(2))} if found else {}
