"""A CPU attention kernel that returns, beside the output, each row's log-sum-exp, largest logit
and entropy, in one pass: every statistic capture needs at about the cost of the plain forward.

The CPU flash kernel behind SDPA returns only the log-sum-exp, so with it the entropy (breadth) and
the row maximum (focus, the ``max`` statistic) each cost one more attention pass. This kernel keeps
them as it goes (online softmax over blocks of keys, as flash attention does): the running maximum
``m`` is the row maximum, and ``u = sum_j p_j (s_j - m)`` beside ``l = sum_j p_j`` (both rescaled
when ``m`` grows) gives the entropy ``log l - u / l`` without cancellation.

It is C++ (GCC vector extensions, no torch headers), built on first use with the system compiler
(``c++ -O3 -march=native``, about 2 s) into ``native/`` under the cache (``$INTERP_ASSERT_CACHE`` or
``~/.cache/interp_assert``, keyed by the source, compiler and CPU). A library there is loaded only
when that folder is private to this user and the library carries this user's signature (see
:func:`_trusted_build`): a restored or planted cache is never enough to run code. It is called through ``ctypes``
from ``torch.get_num_threads()`` threads that take blocks of query rows from a shared counter
(ctypes releases the GIL). Where there is no compiler, or ``INTERP_ASSERT_NATIVE=0``, it is not
available and capture does without it. Float32 only (other dtypes are converted), head sizes
16-128 in steps of 16, 160, 192 and 256, causal with an optional sliding window, no soft-capping.
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
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import torch

from interp_assert import private_files as trust
from interp_assert.errors import UnsafePathError

# Keys are passed transposed and padded by this many columns (the kernel's key block).
KEY_BLOCK = 256

_POOL: ThreadPoolExecutor | None = None


def available() -> bool:
    """Whether the kernel is built (building it on first call) and allowed."""
    return _library() is not None


def supports(head_dim: int, value_dim: int) -> bool:
    library = _library()
    return library is not None and bool(library.supported(head_dim, value_dim))


def attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, window: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal attention of ``query[B, H, T, D]`` over ``key``/``value[B, KV, T, D]``: returns
    ``(output, lse, entropy, row_max)``, the output ``[B, T, H, Dv]`` in the query's dtype, the
    rest ``[B, H, T]`` float32."""
    library = _library()
    if library is None:
        raise RuntimeError(f"the native attention kernel is not available: {build_error()}")
    batch, heads, n_tokens, head_dim = query.shape
    kv_heads, value_dim = key.shape[1], value.shape[-1]
    q = _rows_contiguous(query.float())
    v = _rows_contiguous(value.float())
    keys = key.new_zeros(batch, kv_heads, head_dim, n_tokens + KEY_BLOCK, dtype=torch.float32)
    keys[..., :n_tokens] = key.transpose(-1, -2)
    out = torch.empty(batch, n_tokens, heads, value_dim, dtype=torch.float32, device=query.device)
    lse, entropy, row_max = (torch.empty(batch, heads, n_tokens) for _ in range(3))
    shape = torch.tensor([batch, heads, kv_heads, n_tokens, head_dim, value_dim], dtype=torch.int64)
    strides = torch.tensor([*q.stride()[:3], *keys.stride()[:3], *v.stride()[:3]], dtype=torch.int64)
    counter = torch.zeros(1, dtype=torch.int64)
    arguments: tuple[Any, ...] = (
        q.data_ptr(), keys.data_ptr(), v.data_ptr(), shape.data_ptr(), strides.data_ptr(), scale, window or 0,
        out.data_ptr(), lse.data_ptr(), entropy.data_ptr(), row_max.data_ptr(), counter.data_ptr(),
    )  # fmt: skip
    threads = max(1, torch.get_num_threads())
    helpers = [_pool(threads).submit(library.attention_stats, *arguments) for _ in range(threads - 1)]
    status = library.attention_stats(*arguments)
    for helper in helpers:
        status |= helper.result()
    if status:
        raise RuntimeError(f"native attention kernel failed (status {status}) for head size {head_dim}")
    return out.to(query.dtype), lse, entropy, row_max


def _rows_contiguous(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def _pool(threads: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers < threads - 1:
        _POOL = ThreadPoolExecutor(max(1, threads - 1), thread_name_prefix="interp_assert_attention")
    return _POOL


def _forget_pool() -> None:
    """A forked child has none of the parent's threads: it starts a pool of its own."""
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _library() -> Any:
    return _state()[0]


def build_error() -> str | None:
    """Why the kernel is not available (``None`` when it is)."""
    return _state()[1]


def forget() -> None:
    """Try again at the next use (after ``INTERP_ASSERT_NATIVE``, ``CXX`` or the cache folder changed)."""
    _state.cache_clear()


@cache  # once per process (functools.cache is thread-safe: concurrent first calls may both build, atomically)
def _state() -> tuple[Any, str | None]:
    try:
        return _load(_trusted_build()), None
    except (OSError, RuntimeError, subprocess.SubprocessError, UnsafePathError) as error:
        if not str(error).startswith("INTERP_ASSERT_NATIVE=0"):
            # said once, visibly: the run goes on, a little slower
            warnings.warn(
                f"interp_assert: the native attention kernel is not used ({error}); capture uses "
                "PyTorch's flash kernel, with one more attention pass for breadth and the row maximum",
                NativeKernelWarning,
                stacklevel=4,
            )
        return None, str(error)


class NativeKernelWarning(UserWarning):
    """The native kernel could not be built or loaded; capture goes on without it."""


def kernel_folder() -> Path:
    """Where this user's kernel builds live: ``<cache>/native``."""
    root = os.environ.get("INTERP_ASSERT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "interp_assert") / "native"


def library_path() -> Path:
    """The kernel library for this source, compiler, flags and CPU (it may not exist yet)."""
    compiler = _compiler()
    digest = hashlib.sha256("\n".join([SOURCE, compiler, *FLAGS, _cpu_signature()]).encode()).hexdigest()[:16]
    return kernel_folder() / f"attention-{digest}.so"


FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-fno-exceptions")


def _compiler() -> str:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (c++ or g++) on PATH")
    return compiler


def _trusted_build() -> Path:
    """The kernel library, loaded only if this user built it here: its folder must be private
    (:func:`~interp_assert.private_files.require_private_folder`) and its signature (HMAC-SHA256
    under a key kept outside the cache, :func:`~interp_assert.private_files.user_key`) must
    match. A library that fails either check, e.g. one restored with a CI cache or planted by
    someone else, is never loaded: it is rebuilt in its place."""
    if os.environ.get("INTERP_ASSERT_NATIVE", "1") == "0":
        raise RuntimeError("INTERP_ASSERT_NATIVE=0")
    target = library_path()
    trust.require_private_folder(target.parent, "the native kernel's folder")
    key = trust.user_key()
    signature = target.with_name(target.name + ".sig")
    if target.exists():
        if trust.signed_by(key, target, signature):
            return target
        warnings.warn(
            f"interp_assert: {target} was not built by this user here (no valid signature): not loaded, rebuilt",
            NativeKernelWarning,
            stacklevel=3,
        )
    _build_into(target)
    trust.sign(key, target, signature)
    return target


def _build_into(target: Path) -> None:
    compiler = _compiler()
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        source = Path(scratch) / "attention.cpp"
        source.write_text(SOURCE)
        built = Path(scratch) / target.name
        done = subprocess.run(
            [compiler, *FLAGS, "-o", str(built), str(source)], capture_output=True, text=True, timeout=300, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-2000:]}")
        os.replace(built, target)  # atomic: concurrent builders each write a complete file


def status() -> str:
    """One line for ``interp-assert doctor``: where the kernel is, or why it is not used."""
    if available():
        return f"native attention kernel: built and signed by this user, {library_path()}"
    return f"native attention kernel: not used ({build_error()})"


def _load(path: Path) -> Any:
    library = ctypes.CDLL(str(path))
    pointer, int64 = ctypes.c_void_p, ctypes.c_int64
    arguments: list[Any] = [pointer] * 5 + [ctypes.c_float, int64] + [pointer] * 5
    library.attention_stats.argtypes = arguments
    library.attention_stats.restype = ctypes.c_int
    library.supported.argtypes = [int64, int64]
    library.supported.restype = ctypes.c_int
    return library


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the machine and its CPU's feature flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} {flags}"


SOURCE = r"""
// Causal attention in one pass that also returns, per query row, the log-sum-exp, the largest
// logit and the entropy of the softmax (flash-attention style: online softmax over key blocks).
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4)));  // unaligned loads and stores
typedef int32_t vi __attribute__((vector_size(64)));
enum { W = 16, R = 6, BQ = 16 * R, BK = 256, TILE = 64 };
static const float MASKED = -1e30f;

static inline vf splat(float x) { return vf{} + x; }
static inline vf load(const float* p) { return *(const vfu*)p; }
static inline void store(float* p, vf x) { *(vfu*)p = x; }

// exp(x) for x <= 0 (Cephes' exp2f polynomial: relative error below 2e-7); below -87 it is 0.
static inline vf vexp(vf x) {
    vf t = x * 1.44269504088896341f;
    t = t < -126.0f ? splat(-126.0f) : t;
    vf n = __builtin_convertvector(__builtin_convertvector(t + (t < 0 ? splat(-0.5f) : splat(0.5f)), vi), vf);
    vf f = t - n;  // in [-0.5, 0.5]
    vf p = splat(1.535336188319500e-4f);
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    vf scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -87.0f ? splat(0.0f) : p * scale;
}

static inline vf vmax(vf a, vf b) { return a > b ? a : b; }
static inline float hmax(vf x) {
    x = vmax(x, __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
    x = vmax(x, __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
    x = vmax(x, __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
    x = vmax(x, __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
    return x[0];
}
static inline float hsum(vf x) {
    x += __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    x += __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    x += __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    x += __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    return x[0];
}

struct Args {
    const float *q, *k, *v;
    int64_t B, H, KV, T, D, DV;
    int64_t qsb, qsh, qst, ksb, ksh, kst, vsb, vsh, vst;
    float scale;
    int64_t window;  // 0: none
    float *out;      // [B, T, H, DV]
    float *lse, *entropy, *rowmax;  // [B, H, T]
};

template <int ND, int NDV>
static void one_block(const Args& a, int64_t b, int64_t h, int64_t q0, float* scratch) {
    const int64_t D = ND * W, DV = NDV * W, T = a.T;
    float* Qs = scratch;             // [BQ][D]
    float* Kt = Qs + BQ * D;         // [D][BK]
    float* S = Kt + D * BK;          // [BQ][BK]
    float* O = S + BQ * BK;          // [BQ][DV]
    float m[BQ], l[BQ], u[BQ];
    const int64_t rows = T - q0 < BQ ? T - q0 : BQ;
    const int64_t kvh = h / (a.H / a.KV);
    const float* qb = a.q + b * a.qsb + h * a.qsh;
    const float* kb = a.k + b * a.ksb + kvh * a.ksh;
    const float* vb = a.v + b * a.vsb + kvh * a.vsh;
    for (int64_t r = 0; r < BQ; r++) {
        for (int64_t x = 0; x < ND; x++)
            store(Qs + r * D + x * W, r < rows ? load(qb + (q0 + r) * a.qst + x * W) * a.scale : splat(0));
        for (int64_t x = 0; x < NDV; x++) store(O + r * DV + x * W, splat(0));
        m[r] = MASKED, l[r] = 0, u[r] = 0;
    }
    const int64_t last_row = q0 + rows - 1;
    int64_t first_key = 0;
    if (a.window > 0 && q0 - a.window + 1 > 0) first_key = q0 - a.window + 1;
    for (int64_t k0 = first_key; k0 <= last_row; k0 += BK) {
        const int64_t keys = last_row + 1 - k0 < BK ? last_row + 1 - k0 : BK;
        // keys are laid out [D, T + BK] (transposed, padded): copy this block's columns
        const int64_t copied = (keys + TILE - 1) / TILE * TILE;
        for (int64_t d = 0; d < D; d++)
            for (int64_t x = 0; x < copied / W; x++) store(Kt + d * BK + x * W, load(kb + d * a.kst + k0 + x * W));
        // S = Qs Kt, R rows and TILE keys at a time
        const int64_t tiles = (keys + TILE - 1) / TILE;
        for (int64_t tile = 0; tile < tiles; tile++) {
            const float* kt = Kt + tile * TILE;
            for (int64_t r = 0; r < BQ; r += R) {
                vf acc[R][TILE / W] = {};
                for (int64_t d = 0; d < D; d++) {
                    vf kv[TILE / W];
                    for (int x = 0; x < TILE / W; x++) kv[x] = load(kt + d * BK + x * W);
                    for (int i = 0; i < R; i++) {
                        vf qs = splat(Qs[(r + i) * D + d]);
                        for (int x = 0; x < TILE / W; x++) acc[i][x] += qs * kv[x];
                    }
                }
                for (int i = 0; i < R; i++)
                    for (int x = 0; x < TILE / W; x++) store(S + (r + i) * BK + tile * TILE + x * W, acc[i][x]);
            }
        }
        const int64_t width = tiles * TILE;  // columns of S computed (keys, then padding up to a tile)
        // keys a row cannot see: later ones, ones outside its window, padding
        const bool ragged = k0 + width - 1 > q0 || keys < width || (a.window > 0 && last_row - k0 >= a.window);
        for (int64_t r = 0; r < rows; r++) {
            float* s = S + r * BK;
            if (ragged) {
                const int64_t i = q0 + r;
                for (int64_t c = 0; c < width; c++) {
                    const int64_t j = k0 + c;
                    if (c >= keys || j > i || (a.window > 0 && i - j >= a.window)) s[c] = MASKED;
                }
            }
            vf mx = load(s);
            for (int64_t x = 1; x < width / W; x++) mx = mx > load(s + x * W) ? mx : load(s + x * W);
            const float block_max = hmax(mx);
            const float new_max = block_max > m[r] ? block_max : m[r];
            const float alpha = expf(m[r] - new_max);
            vf sum = splat(0), weighted = splat(0);
            for (int64_t x = 0; x < width / W; x++) {
                vf shifted = load(s + x * W) - new_max;
                vf p = vexp(shifted);
                if (ragged) p = load(s + x * W) == MASKED ? splat(0) : p;
                sum += p;
                weighted += p * shifted;
                store(s + x * W, p);
            }
            // u = sum_j p_j (s_j - m): rescaled to the new maximum
            u[r] = alpha * (u[r] + l[r] * (m[r] - new_max)) + hsum(weighted);
            l[r] = alpha * l[r] + hsum(sum);
            m[r] = new_max;
            if (alpha != 1.0f)
                for (int x = 0; x < NDV; x++) store(O + r * DV + x * W, load(O + r * DV + x * W) * alpha);
        }
        // O += P V, RV rows at a time (as many as keep the accumulators in registers)
        constexpr int RV = NDV <= 4 ? R : (NDV <= 8 ? 3 : 1);
        for (int64_t r = 0; r < BQ; r += RV) {
            vf o[RV][NDV];
            for (int i = 0; i < RV; i++)
                for (int x = 0; x < NDV; x++) o[i][x] = load(O + (r + i) * DV + x * W);
            for (int64_t c = 0; c < keys; c++) {
                const float* vrow = vb + (k0 + c) * a.vst;
                vf vv[NDV];
                for (int x = 0; x < NDV; x++) vv[x] = load(vrow + x * W);
                for (int i = 0; i < RV; i++) {
                    vf p = splat(S[(r + i) * BK + c]);
                    for (int x = 0; x < NDV; x++) o[i][x] += p * vv[x];
                }
            }
            for (int i = 0; i < RV; i++)
                for (int x = 0; x < NDV; x++) store(O + (r + i) * DV + x * W, o[i][x]);
        }
    }
    for (int64_t r = 0; r < rows; r++) {
        const int64_t i = q0 + r;
        const float inv = 1.0f / l[r];
        float* dst = a.out + ((b * T + i) * a.H + h) * DV;
        for (int x = 0; x < NDV; x++) store(dst + x * W, load(O + r * DV + x * W) * inv);
        const int64_t at = (b * a.H + h) * T + i;
        a.lse[at] = m[r] + logf(l[r]);
        a.entropy[at] = logf(l[r]) - u[r] * inv;
        a.rowmax[at] = m[r];
    }
}

typedef void (*BlockFn)(const Args&, int64_t, int64_t, int64_t, float*);

// One instantiation per head size (keys and values the same size): 16 to 256 floats.
static BlockFn pick(int64_t nd, int64_t ndv) {
    if (nd != ndv) return 0;
    switch (nd) {
        case 1: return one_block<1, 1>;
        case 2: return one_block<2, 2>;
        case 3: return one_block<3, 3>;
        case 4: return one_block<4, 4>;
        case 5: return one_block<5, 5>;
        case 6: return one_block<6, 6>;
        case 7: return one_block<7, 7>;
        case 8: return one_block<8, 8>;
        case 10: return one_block<10, 10>;
        case 12: return one_block<12, 12>;
        case 16: return one_block<16, 16>;
        default: return 0;
    }
}

extern "C" int supported(int64_t D, int64_t DV) {
    return D % W == 0 && DV % W == 0 && pick(D / W, DV / W) != 0;
}

// Work through blocks of query rows, taking the next from *next_task (shared by the calling
// threads; tasks are numbered largest first: the last row blocks see the most keys).
extern "C" int attention_stats(const float* q, const float* k, const float* v, const int64_t* shape,
                               const int64_t* strides, float scale, int64_t window, float* out, float* lse,
                               float* entropy, float* rowmax, int64_t* next_task) {
    Args a = {q, k, v, shape[0], shape[1], shape[2], shape[3], shape[4], shape[5],
              strides[0], strides[1], strides[2], strides[3], strides[4], strides[5],
              strides[6], strides[7], strides[8], scale, window, out, lse, entropy, rowmax};
    BlockFn fn = pick(a.D / W, a.DV / W);
    if (!fn || a.D % W || a.DV % W) return 1;
    float* scratch = (float*)malloc(sizeof(float) * (BQ * a.D + a.D * BK + BQ * BK + BQ * a.DV));
    if (!scratch) return 2;
    const int64_t blocks = (a.T + BQ - 1) / BQ, tasks = blocks * a.B * a.H;
    for (;;) {
        const int64_t task = __atomic_fetch_add(next_task, 1, __ATOMIC_RELAXED);
        if (task >= tasks) break;
        const int64_t block = blocks - 1 - task / (a.B * a.H), bh = task % (a.B * a.H);
        fn(a, bh / a.H, bh % a.H, block * BQ, scratch);
    }
    free(scratch);
    return 0;
}
"""
