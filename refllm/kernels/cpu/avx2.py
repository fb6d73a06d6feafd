"""AVX2 integer dot products for the ggml kernels, through LLVM's x86 intrinsics.

llama.cpp's quantized kernels multiply 8-bit integers with two instructions: vpmaddubsw
(unsigned bytes times signed bytes, adjacent pairs summed to int16) and vpmaddwd against ones
(adjacent int16 pairs summed to int32). That gives eight int32 lanes, lane j holding the sum
of the four products 4j..4j+3 of a 32-byte block. LLVM's loop vectorizer never emits those
two instructions from Numba code, and without them an integer dot product runs at a third of
the speed. This module calls them directly: an @intrinsic builds the LLVM IR of a whole
register-tiled kernel, which Numba compiles into the calling function.

    AVAILABLE         whether this machine has AVX2 and FMA (else callers use their portable
                      Numba kernels, which give the same bits more slowly)
    q8_dot_unsigned,  4 weight rows x 2 tokens of a legacy-type product: per block of 32, the
    q8_dot_offset,    eight int32 lanes, converted to float32 and folded into eight float32
    q8_dot_signed     accumulators per (row, token) with fma(scale, lane, acc), then hsum8
    f32_dot_tile      4 rows x 2 rows of tinyBLAS's float product: 8 lanes of fused
                      multiply-adds along k, then hsum8

The integer sums are exact (no int16 pair overflows: |w| <= 128, |a| <= 127), so they equal
llama.cpp's whatever the instruction sequence; the float32 steps are llama.cpp's own.
"""

from __future__ import annotations

import platform

from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _host_has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    features = llvm.get_host_cpu_features()
    return all(features.get(name, False) for name in ("avx2", "fma"))


AVAILABLE = _host_has_avx2()

ROWS, TOKENS = 4, 2             # the register tile: 8 accumulators of 8 lanes

# q8_lanes_tile's kinds of weight quants
UNSIGNED = 0                    # Q4_1, Q5_1: 0..31, multiplied as they are
OFFSET = 1                      # Q4_0, Q5_0: stored unsigned (q, not q - offset); the caller's
                                # `corr` holds offset * the activations' lane sums, subtracted
SIGNED = 2                      # Q8_0: -128..127; |w| times a with w's sign (vpsignb)

_I8, _I16, _I32, _I64, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
_V32I8, _V16I16, _V8I32, _V8F32 = (ir.VectorType(_I8, 32), ir.VectorType(_I16, 16),
                                   ir.VectorType(_I32, 8), ir.VectorType(_F32, 8))


def _data(context, builder, array_type, array):
    """The data pointer of a Numba array argument."""
    return cgutils.create_struct_proxy(array_type)(context, builder, value=array).data


def _function(builder, name, result, arguments):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(result, arguments), name)


def _q8_dot_tile(mode):
    """The intrinsic q8_dot_tile for one kind of weight quants (UNSIGNED, OFFSET or SIGNED)."""

    @intrinsic
    def q8_dot_tile(typingctx, out, out_at, out_stride, w, w_abs, w_at, a, a_at, corr, corr_at,
                    d_rows, m_rows, d_pairs, s_pairs, pair_at, nb):
        sig = types.void(out, out_at, out_stride, w, w_abs, w_at, a, a_at, corr, corr_at,
                         d_rows, m_rows, d_pairs, s_pairs, pair_at, nb)
        return sig, lambda *args: _q8_dot_tile_codegen(mode, *args)

    return q8_dot_tile


def _q8_dot_tile_codegen(mode, context, builder, signature, args):
    """q8_dot_tile(out, out_at, out_stride, w, w_abs, w_at, a, a_at, corr, corr_at, d_rows,
    m_rows, d_pairs, s_pairs, pair_at, nb): the 4 x 2 dot products of weight rows r and
    tokens t over nb blocks of 32 as llama.cpp's legacy-type kernels compute them. With p =
    2 r + t the tile's pair:

        lane[j]   = sum(w[r, 32b + 4j + i] * a[t, 32b + 4j + i], i = 0..3)       int32
                    (minus corr[t, 8b + j] for OFFSET)
        acc[p]    = fma(d_rows[b, p] * d_pairs[b, p], float(lane), acc[p])       8 float32 lanes
        summs[p] += m_rows[b, p] * s_pairs[b, p]                                 (UNSIGNED)
        out[t, r] = hsum8(acc[p]) (+ summs[p])

    into out[out_at + t * out_stride + r]. The arrays are flat, C-ordered, and start at the
    element offsets *_at: w int8 [4, k] (w_abs the same rows' absolute values for SIGNED),
    a int8 [2, k], corr int32 [2, 8 nb] (OFFSET), d_rows and m_rows float32 [nb, 8] (the
    rows' d_w and m_w, each twice), d_pairs and s_pairs float32 [nb, 8] from pair_at (the
    tokens' d_a and s_a, four times); k = 32 nb. Arrays a kind does not read may be any."""
    def data(i, at=None):
        # array argument i's data pointer, advanced by argument `at` elements
        pointer = _data(context, builder, signature.args[i], args[i])
        return pointer if at is None else builder.gep(pointer, [args[at]])

    def const(value):
        return ir.Constant(_I64, value)

    out_p, w_p, w_abs_p, a_p, corr_p = data(0, 1), data(3, 5), data(4, 5), data(6, 7), data(8, 9)
    d_rows_p, m_rows_p, d_pairs_p, s_pairs_p = data(10), data(11), data(12, 14), data(13, 14)
    out_stride, blocks = args[2], args[15]
    k = builder.mul(blocks, const(32))
    maddubs = _function(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, [_V32I8, _V32I8])
    maddwd = _function(builder, "llvm.x86.avx2.pmadd.wd", _V8I32, [_V16I16, _V16I16])
    sign = _function(builder, "llvm.x86.avx2.psign.b", _V32I8, [_V32I8, _V32I8])
    fma = _function(builder, "llvm.fma.v8f32", _V8F32, [_V8F32, _V8F32, _V8F32])
    ones = ir.Constant(_V16I16, [ir.Constant(_I16, 1)] * 16)

    def load(pointer, index, vector_type):
        # an unaligned vector load at element `index` of pointer
        at = builder.gep(pointer, [index])
        return builder.load(builder.bitcast(at, vector_type.as_pointer()), align=1)

    # the accumulators live in allocas, which LLVM promotes to registers; the block's scales
    # go through memory, to be broadcast from it
    accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, None)) for _ in range(ROWS * TOKENS)]
    summs = cgutils.alloca_once_value(builder, ir.Constant(_V8F32, None))
    scales = cgutils.alloca_once(builder, _V8F32)
    scales_p = builder.bitcast(scales, _F32.as_pointer())
    with cgutils.for_range(builder, blocks) as loop:
        b = loop.index
        first = builder.mul(b, const(32))                      # the block's first element
        builder.store(builder.fmul(load(d_rows_p, builder.mul(b, const(8)), _V8F32),
                                   load(d_pairs_p, builder.mul(b, const(8)), _V8F32)), scales)
        if mode == UNSIGNED:
            builder.store(builder.fadd(builder.load(summs), builder.fmul(load(m_rows_p, builder.mul(b, const(8)), _V8F32),
                                                                         load(s_pairs_p, builder.mul(b, const(8)), _V8F32))), summs)
        ws = [load(w_p, builder.add(builder.mul(const(r), k), first), _V32I8) for r in range(ROWS)]
        for t in range(TOKENS):
            a_t = load(a_p, builder.add(builder.mul(const(t), k), first), _V32I8)
            if mode == OFFSET:
                corr_t = load(corr_p, builder.mul(builder.add(builder.mul(const(t), blocks), b), const(8)), _V8I32)
            for r in range(ROWS):
                if mode == SIGNED:       # |w| times a with w's sign, as llama.cpp does
                    w_abs = load(w_abs_p, builder.add(builder.mul(const(r), k), first), _V32I8)
                    pairs = builder.call(maddubs, [w_abs, builder.call(sign, [a_t, ws[r]])])
                else:
                    pairs = builder.call(maddubs, [ws[r], a_t])
                if mode == SIGNED:
                    lanes = builder.call(maddwd, [pairs, ones])
                else:
                    # lane j = pairs[2j] + pairs[2j+1], which fits int16 here: (x + (x << 16)) >> 16
                    # on the int32 lanes, three cheap operations instead of a multiply
                    x = builder.bitcast(pairs, _V8I32)
                    sixteen = ir.Constant(_V8I32, [ir.Constant(_I32, 16)] * 8)
                    lanes = builder.ashr(builder.add(x, builder.shl(x, sixteen)), sixteen)
                if mode == OFFSET:
                    lanes = builder.sub(lanes, corr_t)
                s = builder.load(builder.gep(scales_p, [const(TOKENS * r + t)]))
                s8 = builder.shuffle_vector(builder.insert_element(ir.Constant(_V8F32, ir.Undefined), s, ir.Constant(_I32, 0)),
                                            ir.Constant(_V8F32, ir.Undefined), ir.Constant(_V8I32, [0] * 8))
                slot = accs[TOKENS * r + t]
                builder.store(builder.call(fma, [s8, builder.sitofp(lanes, _V8F32), builder.load(slot)]), slot)
    _store_hsums(builder, [builder.load(slot) for slot in accs], out_p, out_stride,
                 builder.load(summs) if mode == UNSIGNED else None)
    return context.get_dummy_value()


def _store_hsums(builder, accs, out_p, out_stride, summs=None):
    """out[t * out_stride + r] = hsum8(accs[2 r + t]) (+ summs[2 r + t]) for the 4 x 2 tile,
    all eight sums at once: h[p] = (l4 + l0, l5 + l1, l6 + l2, l7 + l3) for each pair p, then
    the vectors u_i holding h[p][i] of every pair, and (u0 + u2) + (u1 + u3): hsum8's
    additions exactly."""
    def shuffle(x, y, mask):
        return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(_I32, len(mask)), mask))

    halves = [builder.fadd(shuffle(acc, acc, [4, 5, 6, 7]), shuffle(acc, acc, [0, 1, 2, 3])) for acc in accs]
    by8 = [shuffle(halves[i], halves[i + 1], list(range(8))) for i in range(0, 8, 2)]
    by16 = [shuffle(by8[i], by8[i + 1], list(range(16))) for i in (0, 2)]
    all32 = shuffle(by16[0], by16[1], list(range(32)))
    u = [shuffle(all32, all32, [4 * p + i for p in range(8)]) for i in range(4)]
    sums = builder.fadd(builder.fadd(u[0], u[2]), builder.fadd(u[1], u[3]))
    if summs is not None:
        sums = builder.fadd(sums, summs)
    for r in range(ROWS):
        for t in range(TOKENS):
            at = builder.add(builder.mul(ir.Constant(_I64, t), out_stride), ir.Constant(_I64, r))
            builder.store(builder.extract_element(sums, ir.Constant(_I32, TOKENS * r + t)), builder.gep(out_p, [at]))


@intrinsic
def f32_dot_tile(typingctx, out, out_at, out_stride, a, a_at, b, b_at, k):
    """f32_dot_tile(out, out_at, out_stride, a, a_at, b, b_at, k): the 4 x 2 dot products of
    rows r of a and rows t of b as tinyBLAS's AVX2 float kernel computes them: lane j of 8
    adds the products of elements j, j + 8, j + 16, ... with fused multiply-adds, then hsum8,
    into out[out_at + t * out_stride + r]. a float32 [4, k] from a_at, b float32 [2, k] from
    b_at, flat and C-ordered; k a multiple of 8."""
    sig = types.void(out, out_at, out_stride, a, a_at, b, b_at, k)

    def codegen(context, builder, signature, args):
        out_p, a_p, b_p = (builder.gep(_data(context, builder, signature.args[i], args[i]), [args[i + 1]])
                           for i in (0, 3, 5))
        k = args[7]
        fma = _function(builder, "llvm.fma.v8f32", _V8F32, [_V8F32, _V8F32, _V8F32])

        def load(pointer, row, column):
            at = builder.gep(pointer, [builder.add(builder.mul(ir.Constant(_I64, row), k), column)])
            return builder.load(builder.bitcast(at, _V8F32.as_pointer()), align=4)

        accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, None)) for _ in range(ROWS * TOKENS)]
        steps = builder.udiv(k, ir.Constant(_I64, 8))
        with cgutils.for_range(builder, steps) as loop:
            column = builder.mul(loop.index, ir.Constant(_I64, 8))
            a_rows = [load(a_p, r, column) for r in range(ROWS)]
            for t in range(TOKENS):
                b_t = load(b_p, t, column)
                for r in range(ROWS):
                    slot = accs[TOKENS * r + t]
                    builder.store(builder.call(fma, [a_rows[r], b_t, builder.load(slot)]), slot)
        _store_hsums(builder, [builder.load(slot) for slot in accs], out_p, args[2])
        return context.get_dummy_value()

    return sig, codegen


q8_dot_unsigned = _q8_dot_tile(UNSIGNED)
q8_dot_offset = _q8_dot_tile(OFFSET)
q8_dot_signed = _q8_dot_tile(SIGNED)
