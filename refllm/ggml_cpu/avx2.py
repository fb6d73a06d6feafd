"""AVX2 register tiles for the ggml kernels, through LLVM's x86 intrinsics.

llama.cpp's quantized kernels multiply 8-bit integers with two instructions: vpmaddubsw
(unsigned bytes times signed bytes, adjacent pairs summed to int16) and vpmaddwd (adjacent
int16 pairs times int16 factors, summed to int32). Against ones that gives eight int32 lanes,
lane j holding the sum of the four products 4j..4j+3 of a 32-byte block. LLVM's loop
vectorizer never emits those instructions from Numba code, and keeping eight 8-lane float32
accumulators in registers across a loop is beyond it too; without both an integer dot product
runs at a third of the speed. This module writes them directly: each @intrinsic below builds
the LLVM IR of one register-tiled kernel (a loop over the blocks of k), which Numba compiles
into the calling function. A tile is 4 weight rows r x 2 tokens t, eight (row, token) pairs
p = 2 r + t, each with its own vector accumulator(s) or its own lane of one.

    AVAILABLE         whether this machine has AVX2, FMA and F16C (else the callers use their
                      portable Numba kernels, which give the same bits more slowly)
    q8_dot_unsigned,  legacy types (vec_dot / tinyBLAS): per block of 32, eight int32 lanes,
    q8_dot_offset,    converted to float32 and folded into the pair's eight float32 lanes with
    q8_dot_signed     fma(d_w * d_a, lane, acc), then hsum8 (+ the Q4_1/Q5_1 min term)
    f32_dot_tile      tinyBLAS's float product: 8 lanes of fused multiply-adds along k, hsum8
    q4_k_dot_tile     repack.cpp's Q4_K gemm: per two sub-blocks, one int32 per pair (lane p)
                      and two fused multiply-adds, for the scales and for the mins
    kquant_dot_plain, tiled.cpp's K-quant microtile: per super-block, s1 (and s2) as int32
    kquant_dot_mins   in lane p, then d_w * s1, (fnmadd dmin_w s2), fma into y by d_a
    unpack_nibbles16, a block's quants from their nibbles (and Q5's fifth bits) with vector
    unpack_nibbles32  operations, for the decoding the tiles read from
    pair_lanes        a per-token array laid out for the eight lanes (NumPy)

The integer sums are exact (no int16 pair saturates, no int32 overflows: each kernel says
why), so they equal llama.cpp's whatever the instruction sequence; the float32 operations
are llama.cpp's own, in its order, so every output has its bits.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _host_has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    features = llvm.get_host_cpu_features()
    return all(features.get(name, False) for name in ("avx2", "fma", "f16c"))


AVAILABLE = _host_has_avx2()

ROWS, TOKENS = 4, 2             # the register tile: 8 accumulators of 8 lanes

# q8_dot's kinds of weight quants
UNSIGNED = 0                    # Q4_1, Q5_1: 0..31, multiplied as they are
OFFSET = 1                      # Q4_0, Q5_0: stored unsigned (q, not q - offset); offset times
                                # the activations is subtracted from the int16 pair sums
SIGNED = 2                      # Q8_0: -128..127; |w| times a with w's sign (vpsignb)

_I8, _I16, _I32, _I64, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
_V32I8, _V16I16, _V8I32, _V8F32 = (ir.VectorType(_I8, 32), ir.VectorType(_I16, 16),
                                   ir.VectorType(_I32, 8), ir.VectorType(_F32, 8))


def pair_lanes(x: np.ndarray) -> np.ndarray:
    """x [n, ...] (n even) laid out for a tile's eight lanes: [n / 2, ..., 8] (x's dtype) with
    x[2 i + t] at lane 2 r + t of entry i, for each of the tile's four rows r."""
    x = np.asarray(x)
    pairs = np.moveaxis(x.reshape((x.shape[0] // 2, 2) + x.shape[1:]), 1, -1)     # [n / 2, ..., 2]
    return np.ascontiguousarray(np.tile(pairs, ROWS))


def _data(context, builder, array_type, array):
    """The data pointer of a Numba array argument."""
    return cgutils.create_struct_proxy(array_type)(context, builder, value=array).data


def _function(builder, name, result, arguments):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(result, arguments), name)


def _pointers(context, builder, signature, args):
    """data(i, at=None): array argument i's data pointer, advanced by argument `at` elements."""
    def data(i, at=None):
        pointer = _data(context, builder, signature.args[i], args[i])
        return pointer if at is None else builder.gep(pointer, [args[at]])

    return data


def _instructions(builder):
    """The LLVM intrinsics the tiles call: vpmaddubsw, vpmaddwd, vpsignb and the 8-lane fused
    multiply-add."""
    return (_function(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, [_V32I8, _V32I8]),
            _function(builder, "llvm.x86.avx2.pmadd.wd", _V8I32, [_V16I16, _V16I16]),
            _function(builder, "llvm.x86.avx2.psign.b", _V32I8, [_V32I8, _V32I8]),
            _function(builder, "llvm.fma.v8f32", _V8F32, [_V8F32, _V8F32, _V8F32]))


def _const(value):
    return ir.Constant(_I64, value)


def _i32s(values):
    """An int32 x 8 constant."""
    return ir.Constant(_V8I32, [ir.Constant(_I32, v) for v in values])


def _load(builder, pointer, index, vector_type):
    """An unaligned vector load at element `index` of pointer."""
    at = builder.gep(pointer, [index])
    return builder.load(builder.bitcast(at, vector_type.as_pointer()), align=1)


def _fp16_field(builder, pointer, at):
    """The little-endian fp16 at byte `at` of a uint8 pointer, as float32 (F16C's vcvtph2ps)."""
    bits = builder.load(builder.bitcast(builder.gep(pointer, [at]), _I16.as_pointer()), align=1)
    return builder.fpext(builder.bitcast(bits, ir.HalfType()), _F32)


def _shuffle(builder, x, y, mask):
    return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(_I32, len(mask)), mask))


def _broadcast(builder, value, vector_type):
    """value in every lane of a vector_type (insertelement into lane 0, then a zero shuffle)."""
    undefined = ir.Constant(vector_type, ir.Undefined)
    lane0 = builder.insert_element(undefined, value, ir.Constant(_I32, 0))
    return _shuffle(builder, lane0, undefined, [0] * vector_type.count)


def _q8_dot_tile(mode):
    """The intrinsic q8_dot_tile for one kind of weight quants (UNSIGNED, OFFSET or SIGNED)."""

    @intrinsic
    def q8_dot_tile(typingctx, out, out_at, out_stride, w, w_abs, w_at, a, offset, scale, scale_at,
                    m_rows, s_pairs, pair, nb):
        sig = types.void(out, out_at, out_stride, w, w_abs, w_at, a, offset, scale, scale_at,
                         m_rows, s_pairs, pair, nb)
        return sig, lambda *args: _q8_dot_tile_codegen(mode, *args)

    return q8_dot_tile


def _q8_dot_tile_codegen(mode, context, builder, signature, args):
    """q8_dot_tile(out, out_at, out_stride, w, w_abs, w_at, a, offset, scale, scale_at, m_rows,
    s_pairs, pair, nb): the 4 x 2 dot products of weight rows r and tokens t = 2 pair,
    2 pair + 1 over nb blocks of 32, as llama.cpp's legacy-type kernels compute them. With
    p = 2 r + t the tile's pair of row and token:

        lane[j]   = sum(w[r, 32b + 4j + i] * a[t, 32b + 4j + i], i = 0..3)       int32
                    (w - offset for OFFSET)
        acc[p]    = fma(scale[b, p], float(lane), acc[p])                        8 float32 lanes
        summs[p] += m_rows[b, p] * s_pairs[pair, b, p]                           (UNSIGNED)
        out[t, r] = hsum8(acc[p]) (+ summs[p])

    into out[out_at + t * out_stride + r]. The arrays are flat and C-ordered: w int8 [4, k]
    from w_at (w_abs the same rows' absolute values for SIGNED), a int8 [n, k], scale float32
    [nb, 8] from scale_at (d_w * d_a, rounded), m_rows float32 [nb, 8] (the rows' m_w, each
    twice) and s_pairs float32 [n / 2, nb, 8] (the tokens' s_a, four times; UNSIGNED);
    k = 32 nb. Arrays a kind does not read may be any."""
    data = _pointers(context, builder, signature, args)


    pair, blocks = args[12], args[13]
    k = builder.mul(blocks, _const(32))
    first_token = builder.mul(pair, _const(2))
    out_p, w_p, w_abs_p = data(0, 1), data(3, 5), data(4, 5)
    a_p = builder.gep(data(6), [builder.mul(first_token, k)])
    offsets = builder.shuffle_vector(
        builder.insert_element(ir.Constant(_V32I8, ir.Undefined), builder.trunc(args[7], _I8), ir.Constant(_I32, 0)),
        ir.Constant(_V32I8, ir.Undefined), ir.Constant(ir.VectorType(_I32, 32), [0] * 32))
    scale_p = data(8, 9)
    m_rows_p = data(10)
    s_pairs_p = builder.gep(data(11), [builder.mul(pair, builder.mul(blocks, _const(8)))])
    out_stride = args[2]
    maddubs, maddwd, sign, fma = _instructions(builder)
    ones = ir.Constant(_V16I16, [ir.Constant(_I16, 1)] * 16)


    # the accumulators live in allocas, which LLVM promotes to registers
    accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, None)) for _ in range(ROWS * TOKENS)]
    summs = cgutils.alloca_once_value(builder, ir.Constant(_V8F32, None))
    with cgutils.for_range(builder, blocks) as loop:
        b = loop.index
        first = builder.mul(b, _const(32))                      # the block's first element
        if mode == UNSIGNED:
            at = builder.mul(b, _const(8))
            term = builder.fmul(_load(builder, m_rows_p, at, _V8F32), _load(builder, s_pairs_p, at, _V8F32))
            builder.store(builder.fadd(builder.load(summs), term), summs)
        ws = [_load(builder, w_p, builder.add(builder.mul(_const(r), k), first), _V32I8) for r in range(ROWS)]
        for t in range(TOKENS):
            a_t = _load(builder, a_p, builder.add(builder.mul(_const(t), k), first), _V32I8)
            if mode == OFFSET:
                # offset * a in int16 pairs, shared by the four rows (|(w - offset) a| pairs fit)
                pairs_offset = builder.call(maddubs, [offsets, a_t])
            for r in range(ROWS):
                if mode == SIGNED:       # |w| times a with w's sign, as llama.cpp does
                    w_abs = _load(builder, w_abs_p, builder.add(builder.mul(_const(r), k), first), _V32I8)
                    pairs = builder.call(maddubs, [w_abs, builder.call(sign, [a_t, ws[r]])])
                else:
                    pairs = builder.call(maddubs, [ws[r], a_t])
                if mode == OFFSET:
                    pairs = builder.sub(pairs, pairs_offset)
                lanes = builder.call(maddwd, [pairs, ones])
                # the pair's scale, broadcast from memory to the eight lanes
                s = builder.load(builder.gep(scale_p, [builder.add(builder.mul(b, _const(8)), _const(TOKENS * r + t))]))
                s8 = _broadcast(builder, s, _V8F32)
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

    halves = [builder.fadd(_shuffle(builder, acc, acc, [4, 5, 6, 7]), _shuffle(builder, acc, acc, [0, 1, 2, 3]))
              for acc in accs]
    by8 = [_shuffle(builder, halves[i], halves[i + 1], list(range(8))) for i in range(0, 8, 2)]
    by16 = [_shuffle(builder, by8[i], by8[i + 1], list(range(16))) for i in (0, 2)]
    all32 = _shuffle(builder, by16[0], by16[1], list(range(32)))
    u = [_shuffle(builder, all32, all32, [4 * p + i for p in range(8)]) for i in range(4)]
    sums = builder.fadd(builder.fadd(u[0], u[2]), builder.fadd(u[1], u[3]))
    if summs is not None:
        sums = builder.fadd(sums, summs)
    for r in range(ROWS):
        for t in range(TOKENS):
            at = builder.add(builder.mul(ir.Constant(_I64, t), out_stride), ir.Constant(_I64, r))
            builder.store(builder.extract_element(sums, ir.Constant(_I32, TOKENS * r + t)), builder.gep(out_p, [at]))


@intrinsic
def f32_dot_tile(typingctx, out, out_at, out_stride, a, a_at, b, b_at, k, k_used):
    """f32_dot_tile(out, out_at, out_stride, a, a_at, b, b_at, k, k_used): the 4 x 2 dot
    products of rows r of a and rows t of b as tinyBLAS's AVX2 float kernel computes them:
    lane j of 8 adds the products of elements j, j + 8, j + 16, ... with fused multiply-adds,
    then hsum8, into out[out_at + t * out_stride + r]. a float32 [4, k] from a_at, b float32
    [2, k] from b_at, flat and C-ordered; only the first k_used elements (a multiple of 8) are
    multiplied: the caller knows the rest of b is zero, and adding 0 * a is exact."""
    sig = types.void(out, out_at, out_stride, a, a_at, b, b_at, k, k_used)

    def codegen(context, builder, signature, args):
        out_p, a_p, b_p = (builder.gep(_data(context, builder, signature.args[i], args[i]), [args[i + 1]])
                           for i in (0, 3, 5))
        k = args[7]
        fma = _function(builder, "llvm.fma.v8f32", _V8F32, [_V8F32, _V8F32, _V8F32])

        def at(row, column):
            return builder.add(builder.mul(_const(row), k), column)

        accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, None)) for _ in range(ROWS * TOKENS)]
        steps = builder.udiv(args[8], _const(8))
        with cgutils.for_range(builder, steps) as loop:
            column = builder.mul(loop.index, _const(8))
            a_rows = [_load(builder, a_p, at(r, column), _V8F32) for r in range(ROWS)]
            for t in range(TOKENS):
                b_t = _load(builder, b_p, at(t, column), _V8F32)
                for r in range(ROWS):
                    slot = accs[TOKENS * r + t]
                    builder.store(builder.call(fma, [a_rows[r], b_t, builder.load(slot)]), slot)
        _store_hsums(builder, [builder.load(slot) for slot in accs], out_p, args[2])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def q4_k_dot_tile(typingctx, out, out_at, out_stride, q, q_at, a, a_at, sc, sc_at, d_rows, dmin_rows, m_rows,
                  d_pairs, bs_pairs, pair_at, nb):
    """q4_k_dot_tile(out, out_at, out_stride, q, q_at, a, a_at, sc, sc_at, d_rows, dmin_rows,
    m_rows, d_pairs, bs_pairs, pair_at, nb): the 4 x 2 Q4_K products of weight rows r and
    tokens t over nb super-blocks of 256, as ggml_gemm_q4_K_8x8_q8_K computes them. With
    p = 2 r + t the tile's pair (one vector lane each), for each super-block b and each pair
    of sub-blocks g (elements 64 g .. 64 g + 63 of the super-block, sub-blocks j = 2g, 2g+1):

        isum[p] = sum_j sc[r, b, j] * sum(q[r, i] a[t, i], i in j)                 int32
        imin[p] = sum_j m_rows[b, j, p] * bs_pairs[b, j, p]                         exact floats
        acc[p]  = fma(float(isum[p]), d_rows[b, p] * d_pairs[b, p], acc[p])
        accm[p] = fma(imin[p], dmin_rows[b, p] * d_pairs[b, p], accm[p])
        out[t, r] = acc[p] - accm[p]

    into out[out_at + t * out_stride + r]. The arrays are flat, C-ordered, and start at the
    element offsets *_at: q uint8 [4, k] (0..15), a int8 [2, k], sc int16 [4, nb, 8] (the
    sub-block scales); d_rows, dmin_rows float32 [nb, 8] and m_rows float32 [nb, 8, 8] (the
    rows' d, dmin and mins for each pair); d_pairs float32 [nb, 8] from pair_at and bs_pairs
    float32 [nb, 8, 8] from 8 pair_at (the tokens' d and sums of 32 quants); k = 256 nb."""
    sig = types.void(out, out_at, out_stride, q, q_at, a, a_at, sc, sc_at, d_rows, dmin_rows, m_rows,
                     d_pairs, bs_pairs, pair_at, nb)

    def codegen(context, builder, signature, args):
        data = _pointers(context, builder, signature, args)




        out_p, q_p, a_p, sc_p = data(0, 1), data(3, 4), data(5, 6), data(7, 8)
        d_rows_p, dmin_rows_p, m_rows_p = data(9), data(10), data(11)
        d_pairs_p = data(12, 14)
        bs_pairs_p = builder.gep(data(13), [builder.mul(args[14], _const(8))])
        out_stride, blocks = args[2], args[15]
        k = builder.mul(blocks, _const(256))
        sc_stride = builder.mul(blocks, _const(8))
        maddubs, maddwd, _, fma = _instructions(builder)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V8F32, None))
        accm = cgutils.alloca_once_value(builder, ir.Constant(_V8F32, None))
        with cgutils.for_range(builder, blocks) as loop:
            b = loop.index
            d_pair = _load(builder, d_pairs_p, builder.mul(b, _const(8)), _V8F32)
            scale = builder.fmul(_load(builder, d_rows_p, builder.mul(b, _const(8)), _V8F32), d_pair)
            scale_min = builder.fmul(_load(builder, dmin_rows_p, builder.mul(b, _const(8)), _V8F32), d_pair)
            for g in range(4):
                first = builder.add(builder.mul(b, _const(256)), _const(64 * g))
                sums = []                                       # int32 x 8 per pair, in pair order
                qs = [[_load(builder, q_p, builder.add(builder.mul(_const(r), k), builder.add(first, _const(32 * h))),
                             _V32I8) for h in (0, 1)] for r in range(ROWS)]
                scs = []
                for r in range(ROWS):
                    row_scales = []
                    for h in (0, 1):
                        at = builder.add(builder.add(builder.mul(_const(r), sc_stride), builder.mul(b, _const(8))),
                                         _const(2 * g + h))
                        one = builder.load(builder.gep(sc_p, [at]))
                        row_scales.append(_broadcast(builder, one, _V16I16))
                    scs.append(row_scales)
                by_pair = {}
                for t in range(TOKENS):
                    a_t = [_load(builder, a_p, builder.add(builder.mul(_const(t), k),
                                                           builder.add(first, _const(32 * h))), _V32I8)
                           for h in (0, 1)]
                    for r in range(ROWS):
                        by_pair[TOKENS * r + t] = builder.add(
                            builder.call(maddwd, [builder.call(maddubs, [qs[r][0], a_t[0]]), scs[r][0]]),
                            builder.call(maddwd, [builder.call(maddubs, [qs[r][1], a_t[1]]), scs[r][1]]))
                sums = [by_pair[p] for p in range(8)]
                isum = _sum_lanes(builder, sums)
                imin = None
                for h in (0, 1):
                    at = builder.add(builder.mul(b, _const(64)), _const(8 * (2 * g + h)))
                    term = builder.fmul(_load(builder, m_rows_p, at, _V8F32), _load(builder, bs_pairs_p, at, _V8F32))
                    imin = term if imin is None else builder.fadd(imin, term)
                builder.store(builder.call(fma, [builder.sitofp(isum, _V8F32), scale, builder.load(acc)]), acc)
                builder.store(builder.call(fma, [imin, scale_min, builder.load(accm)]), accm)
        result = builder.fsub(builder.load(acc), builder.load(accm))
        for r in range(ROWS):
            for t in range(TOKENS):
                at = builder.add(builder.mul(_const(t), out_stride), _const(r))
                builder.store(builder.extract_element(result, ir.Constant(_I32, TOKENS * r + t)),
                              builder.gep(out_p, [at]))
        return context.get_dummy_value()

    return sig, codegen


def _kquant_dot_tile(with_mins):
    """The intrinsic kquant_dot_tile, with the mins term (Q2_K, Q4_K, Q5_K) or without."""

    @intrinsic
    def kquant_dot_tile(typingctx, out, out_at, out_stride, c, c_at, aq, aq_at, sc16, sc_at, wsum_rows, d_rows,
                        dmin_rows, bw_rows, d_pairs, bs_pairs, pair_at, nb):
        sig = types.void(out, out_at, out_stride, c, c_at, aq, aq_at, sc16, sc_at, wsum_rows, d_rows,
                         dmin_rows, bw_rows, d_pairs, bs_pairs, pair_at, nb)
        return sig, lambda *args: _kquant_dot_tile_codegen(with_mins, *args)

    return kquant_dot_tile


def _kquant_dot_tile_codegen(with_mins, context, builder, signature, args):
    """kquant_dot_tile(out, out_at, out_stride, c, c_at, aq, aq_at, sc16, sc_at, wsum_rows,
    d_rows, dmin_rows, bw_rows, d_pairs, bs_pairs, pair_at, nb): the 4 x 2 K-quant products
    of weight rows r and tokens t over nb super-blocks of 256 as tiled.cpp's AVX2 microtile
    computes them. With p = 2 r + t the tile's pair (one vector lane each), per super-block b:

        s1[p] = sum(sc(e) c(e) (q(e) + 128)) - wsum_rows[b, p]     int32 = sum sc(e) c(e) q(e)
        s2[p] = sum_m bw_rows[b, m, p] * bs_pairs[b, m, p]         int32 (with_mins)
        r[p]  = d_rows[b, p] * float(s1[p])
        r[p]  = fma(-dmin_rows[b, p], float(s2[p]), r[p])          (with_mins)
        y[p]  = fma(r[p], d_pairs[b, p], y[p])
        out[t, r] = y[p]

    into out[out_at + t * out_stride + r]. The arrays are flat, C-ordered, and start at the
    element offsets *_at: c int8 [4, k] (codes, |c| <= 32), aq uint8 [2, k] (the Q8_K quants
    plus 128, so that vpmaddubsw takes them as its unsigned operand), sc16 int16 [4, k / 2]
    (per 32 weights: the scale of the first 16 eight times, then of the last 16),
    wsum_rows int32 [nb, 8] (128 * sum sc c of the pair's row and block), d_rows, dmin_rows
    float32 [nb, 8], bw_rows int32 [nb, 16, 8] (the bsum multipliers), d_pairs float32 [nb, 8]
    from pair_at and bs_pairs int32 [nb, 16, 8] from 16 pair_at (the tokens' d and bsums);
    k = 256 nb. Arrays the kind does not read may be any."""
    data = _pointers(context, builder, signature, args)



    out_p, c_p, aq_p, sc_p = data(0, 1), data(3, 4), data(5, 6), data(7, 8)
    wsum_p, d_rows_p, dmin_rows_p, bw_p = data(9), data(10), data(11), data(12)
    d_pairs_p = data(13, 15)
    bs_pairs_p = builder.gep(data(14), [builder.mul(args[15], _const(16))])
    out_stride, blocks = args[2], args[16]
    k = builder.mul(blocks, _const(256))
    half_k = builder.mul(blocks, _const(128))
    maddubs, maddwd, _, fma = _instructions(builder)
    y = cgutils.alloca_once_value(builder, ir.Constant(_V8F32, None))
    with cgutils.for_range(builder, blocks) as loop:
        b = loop.index
        sums = [ir.Constant(_V8I32, None)] * (ROWS * TOKENS)
        for run in range(8):
            first = builder.add(builder.mul(b, _const(256)), _const(32 * run))
            aqs = [_load(builder, aq_p, builder.add(builder.mul(_const(t), k), first), _V32I8) for t in range(TOKENS)]
            for r in range(ROWS):
                c_r = _load(builder, c_p, builder.add(builder.mul(_const(r), k), first), _V32I8)
                sc_r = _load(builder, sc_p, builder.add(builder.mul(_const(r), half_k),
                                              builder.add(builder.mul(b, _const(128)), _const(16 * run))), _V16I16)
                for t in range(TOKENS):
                    p = TOKENS * r + t
                    sums[p] = builder.add(sums[p], builder.call(maddwd, [builder.call(maddubs, [aqs[t], c_r]), sc_r]))
        at8 = builder.mul(b, _const(8))
        s1 = builder.sub(_sum_lanes(builder, sums), _load(builder, wsum_p, at8, _V8I32))
        r_vec = builder.fmul(_load(builder, d_rows_p, at8, _V8F32), builder.sitofp(s1, _V8F32))
        if with_mins:
            s2 = ir.Constant(_V8I32, None)
            for m in range(16):
                at = builder.add(builder.mul(b, _const(128)), _const(8 * m))
                s2 = builder.add(s2, builder.mul(_load(builder, bw_p, at, _V8I32),
                                                 _load(builder, bs_pairs_p, at, _V8I32)))
            minimums = builder.fneg(_load(builder, dmin_rows_p, at8, _V8F32))
            r_vec = builder.call(fma, [minimums, builder.sitofp(s2, _V8F32), r_vec])
        builder.store(builder.call(fma, [r_vec, _load(builder, d_pairs_p, at8, _V8F32), builder.load(y)]), y)
    result = builder.load(y)
    for r in range(ROWS):
        for t in range(TOKENS):
            at = builder.add(builder.mul(_const(t), out_stride), _const(r))
            builder.store(builder.extract_element(result, ir.Constant(_I32, TOKENS * r + t)), builder.gep(out_p, [at]))
    return context.get_dummy_value()


kquant_dot_plain = _kquant_dot_tile(False)
kquant_dot_mins = _kquant_dot_tile(True)


def _unpack_nibbles(count):
    """The intrinsic unpack_nibbles for `count` bytes of nibbles (16 or 32)."""

    @intrinsic
    def unpack_nibbles(typingctx, out, out_at, raw, qs_at, qh_at, with_high):
        sig = types.void(out, out_at, raw, qs_at, qh_at, with_high)
        return sig, lambda *args: _unpack_nibbles_codegen(count, *args)

    return unpack_nibbles


def _unpack_nibbles_codegen(count, context, builder, signature, args):
    """unpack_nibbles(out, out_at, raw, qs_at, qh_at, with_high): out[out_at + i] = the
    2 count unsigned quants in `count` bytes of nibbles, with vector operations
    (bytes_from_nibbles_32): quant i < count is the low nibble of byte i of qs (raw[qs_at:]),
    quant count + i its high nibble. With with_high (count 16 only: Q5_0, Q5_1), bit i of the
    little-endian uint32 at raw[qh_at] is quant i's fifth bit (bytes_from_bits_32). out int8
    or uint8, raw uint8; the offsets in elements."""
    out_p = builder.gep(_data(context, builder, signature.args[0], args[0]), [args[1]])
    raw_p = _data(context, builder, signature.args[2], args[2])
    quants_type = ir.VectorType(_I8, 2 * count)
    quants = _nibbles(builder, raw_p, args[3], count)
    if count == 16:
        with_high = builder.icmp_unsigned("!=", args[5], ir.Constant(args[5].type, 0))
        with builder.if_then(with_high):
            quants_high = _with_fifth_bits(builder, quants, raw_p, args[4])
            builder.store(quants_high, builder.bitcast(out_p, _V32I8.as_pointer()), align=1)
        with builder.if_then(builder.not_(with_high)):
            builder.store(quants, builder.bitcast(out_p, quants_type.as_pointer()), align=1)
    else:
        builder.store(quants, builder.bitcast(out_p, quants_type.as_pointer()), align=1)
    return context.get_dummy_value()


def _nibbles(builder, raw_p, qs_at, count):
    """The 2 count quants (i8 vector) in `count` bytes of nibbles at raw_p[qs_at]: the low
    nibbles first, then the high ones."""
    bytes_type = ir.VectorType(_I8, count)
    qs = builder.load(builder.bitcast(builder.gep(raw_p, [qs_at]), bytes_type.as_pointer()), align=1)
    low = builder.and_(qs, ir.Constant(bytes_type, [ir.Constant(_I8, 0x0F)] * count))
    high = builder.lshr(qs, ir.Constant(bytes_type, [ir.Constant(_I8, 4)] * count))
    return builder.shuffle_vector(low, high, ir.Constant(ir.VectorType(_I32, 2 * count), list(range(2 * count))))


def _with_fifth_bits(builder, quants, raw_p, qh_at):
    """quants (32 x i8) with bit i of the little-endian uint32 at raw_p[qh_at] as quant i's
    fifth bit."""
    qh = builder.load(builder.bitcast(builder.gep(raw_p, [qh_at]), _I32.as_pointer()), align=1)
    v32 = ir.VectorType(_I32, 32)
    every = _broadcast(builder, qh, v32)
    bits = builder.and_(builder.lshr(every, ir.Constant(v32, list(range(32)))), ir.Constant(v32, [1] * 32))
    fifth = builder.trunc(builder.shl(bits, ir.Constant(v32, [4] * 32)), _V32I8)
    return builder.or_(quants, fifth)


unpack_nibbles16 = _unpack_nibbles(16)
unpack_nibbles32 = _unpack_nibbles(32)


def _sum_lanes(builder, vectors):
    """The int32 x 8 vector whose lane p is the sum of vectors[p]'s eight lanes (exact: any
    order), by three rounds of pairwise horizontal adds."""

    def hadd(x, y):
        # vphaddd: per 128-bit half, (x0+x1, x2+x3, y0+y1, y2+y3)
        even = _shuffle(builder, x, y, [0, 2, 8, 10, 4, 6, 12, 14])
        odd = _shuffle(builder, x, y, [1, 3, 9, 11, 5, 7, 13, 15])
        return builder.add(even, odd)

    first = [hadd(vectors[i], vectors[i + 1]) for i in range(0, 8, 2)]
    second = [hadd(first[0], first[1]), hadd(first[2], first[3])]
    # second[0]: low half = the low-half sums of vectors 0..3, high half = their high-half sums
    low = _shuffle(builder, second[0], second[1], [0, 1, 2, 3, 8, 9, 10, 11])
    high = _shuffle(builder, second[0], second[1], [4, 5, 6, 7, 12, 13, 14, 15])
    return builder.add(low, high)


q8_dot_unsigned = _q8_dot_tile(UNSIGNED)
q8_dot_offset = _q8_dot_tile(OFFSET)
q8_dot_signed = _q8_dot_tile(SIGNED)


# -- one token: a weight row's dot product straight from its blocks ------------------------------

# legacy type -> (block bytes, offset of qs, offset of qh or None, has a min m, quant offset), as
# refllm.ggml_cpu.reference.legacy.LEGACY_BLOCKS (repeated: that module imports nothing jitted)
_LEGACY_LAYOUT = {"Q4_0": (18, 2, None, False, 8), "Q4_1": (20, 4, None, True, 0),
                  "Q5_0": (22, 6, 2, False, 16), "Q5_1": (24, 8, 4, True, 0), "Q8_0": (34, 2, None, False, 0)}


def _legacy_row_dot(weight_type):
    """The intrinsic legacy_row_dot for one legacy weight type."""

    @intrinsic
    def legacy_row_dot(typingctx, raw, row_at, a, d_a, s_a, nb):
        sig = types.float32(raw, row_at, a, d_a, s_a, nb)
        return sig, lambda *args: _legacy_row_dot_codegen(weight_type, *args)

    return legacy_row_dot


def _legacy_row_dot_codegen(weight_type, context, builder, signature, args):
    """legacy_row_dot(raw, row_at, a, d_a, s_a, nb) -> float32: ggml_vec_dot_<type>_q8_<0|1>
    (AVX2) of the weight row whose nb blocks start at byte row_at (unsigned) of raw (uint8)
    and one token's activations a int8 [32 nb], d_a and s_a float32 [nb]. Per block b, from
    the block's own bytes (nothing decoded to memory):

        lane[j] = sum(w[32b + 4j + i] * a[32b + 4j + i], i = 0..3)       int32
        acc     = fma(d_w * d_a[b], float(lane), acc)                   8 float32 lanes
        summs  += m_w * s_a[b]                                          (Q4_1, Q5_1)
        result  = hsum8(acc) + summs

    the float32 operations of the q8_dot tiles (and of llama.cpp) in their order."""
    block_bytes, qs_at, qh_at, has_min, offset = _LEGACY_LAYOUT[weight_type]
    data = _pointers(context, builder, signature, args)
    raw_p, a_p, d_a_p, s_a_p = data(0), data(2), data(3), data(4)
    row_at, blocks = args[1], args[5]
    maddubs, maddwd, sign, fma = _instructions(builder)
    ones = ir.Constant(_V16I16, [ir.Constant(_I16, 1)] * 16)
    offsets = ir.Constant(_V32I8, [ir.Constant(_I8, offset)] * 32)

    def fp16_at(at):
        return _fp16_field(builder, raw_p, at)

    acc = cgutils.alloca_once_value(builder, ir.Constant(_V8F32, None))
    summs = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
    with cgutils.for_range(builder, blocks) as loop:
        b = loop.index
        at = builder.add(row_at, builder.mul(b, _const(block_bytes)))
        a_b = _load(builder, a_p, builder.mul(b, _const(32)), _V32I8)
        if weight_type == "Q8_0":        # |w| times a with w's sign, as llama.cpp does
            w = builder.load(builder.bitcast(builder.gep(raw_p, [builder.add(at, _const(qs_at))]),
                                             _V32I8.as_pointer()), align=1)
            pairs = builder.call(maddubs, [builder.call(sign, [w, w]), builder.call(sign, [a_b, w])])
        else:
            w = _nibbles(builder, raw_p, builder.add(at, _const(qs_at)), 16)
            if qh_at is not None:
                w = _with_fifth_bits(builder, w, raw_p, builder.add(at, _const(qh_at)))
            pairs = builder.call(maddubs, [w, a_b])
            if offset:                   # (w - offset) a = w a - offset a, exact in int16
                pairs = builder.sub(pairs, builder.call(maddubs, [offsets, a_b]))
        lanes = builder.call(maddwd, [pairs, ones])
        scale = builder.fmul(fp16_at(at), builder.load(builder.gep(d_a_p, [b])))
        builder.store(builder.call(fma, [_broadcast(builder, scale, _V8F32), builder.sitofp(lanes, _V8F32),
                                         builder.load(acc)]), acc)
        if has_min:
            term = builder.fmul(fp16_at(builder.add(at, _const(2))), builder.load(builder.gep(s_a_p, [b])))
            builder.store(builder.fadd(builder.load(summs), term), summs)
    # hsum8: h = (l4 + l0, l5 + l1, l6 + l2, l7 + l3), then (h0 + h2) + (h1 + h3)
    total = builder.load(acc)
    h = builder.fadd(_shuffle(builder, total, total, [4, 5, 6, 7]), _shuffle(builder, total, total, [0, 1, 2, 3]))

    def lane(i):
        return builder.extract_element(h, ir.Constant(_I32, i))

    result = builder.fadd(builder.fadd(lane(0), lane(2)), builder.fadd(lane(1), lane(3)))
    return builder.fadd(result, builder.load(summs)) if has_min else result


legacy_row_dot_q4_0 = _legacy_row_dot("Q4_0")
legacy_row_dot_q4_1 = _legacy_row_dot("Q4_1")
legacy_row_dot_q5_0 = _legacy_row_dot("Q5_0")
legacy_row_dot_q5_1 = _legacy_row_dot("Q5_1")
legacy_row_dot_q8_0 = _legacy_row_dot("Q8_0")


# -- one token's attention: the KV cache's rows, fp16 or float32 ---------------------------------

def _cells_as_f32(builder, pointer, at, element_type):
    """8 cache elements from element `at` of pointer as float32 x 8: fp16 bits (i16) widened
    (F16C's vcvtph2ps), float32 loaded as they are."""
    if isinstance(element_type, ir.IntType):
        bits = _load(builder, pointer, at, ir.VectorType(_I16, 8))
        return builder.fpext(builder.bitcast(bits, ir.VectorType(ir.HalfType(), 8)), _V8F32)
    return _load(builder, pointer, at, _V8F32)


@intrinsic
def f16_row_dot(typingctx, a, a_at, b, n):
    """f16_row_dot(a, a_at, b, n) -> float32: ggml_vec_dot_f16 (AVX2) of a[a_at:a_at + n]
    (fp16 bits as uint16, or float32) and b[:n] (float32): four 8-lane accumulators of fused
    multiply-adds over each 32 elements, reduced as (x0 + x2) + (x1 + x3), then
    ((l0+l4) + (l1+l5)) + ((l2+l6) + (l3+l7)); the elements past the last whole 32 added in
    float64, as x86.f16_dot_vec."""
    sig = types.float32(a, a_at, b, n)

    def codegen(context, builder, signature, args):
        a_p = builder.gep(_data(context, builder, signature.args[0], args[0]), [args[1]])
        b_p = _data(context, builder, signature.args[2], args[2])
        element = context.get_data_type(signature.args[0].dtype)
        n = args[3]
        fma = _function(builder, "llvm.fma.v8f32", _V8F32, [_V8F32, _V8F32, _V8F32])
        accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, None)) for _ in range(4)]
        steps = builder.udiv(n, _const(32))
        with cgutils.for_range(builder, steps) as loop:
            base = builder.mul(loop.index, _const(32))
            for r in range(4):
                at = builder.add(base, _const(8 * r))
                x = _cells_as_f32(builder, a_p, at, element)
                y = _load(builder, b_p, at, _V8F32)
                builder.store(builder.call(fma, [x, y, builder.load(accs[r])]), accs[r])
        x = [builder.load(slot) for slot in accs]
        lanes = builder.fadd(builder.fadd(x[0], x[2]), builder.fadd(x[1], x[3]))

        def lane(i):
            return builder.extract_element(lanes, ir.Constant(_I32, i))

        t = [builder.fadd(lane(i), lane(i + 4)) for i in range(4)]
        total = cgutils.alloca_once_value(
            builder, builder.fpext(builder.fadd(builder.fadd(t[0], t[1]), builder.fadd(t[2], t[3])), ir.DoubleType()))
        whole = builder.mul(steps, _const(32))
        with cgutils.for_range(builder, builder.sub(n, whole)) as loop:
            at = builder.add(whole, loop.index)
            value = builder.load(builder.gep(a_p, [at]))
            if isinstance(element, ir.IntType):
                value = builder.fpext(builder.bitcast(value, ir.HalfType()), _F32)
            product = builder.fmul(value, builder.load(builder.gep(b_p, [at])))
            builder.store(builder.fadd(builder.load(total), builder.fpext(product, ir.DoubleType())), total)
        return builder.fptrunc(builder.load(total), _F32)

    return sig, codegen


@intrinsic
def row_axpy(typingctx, acc, acc_at, a, a_at, p, n):
    """row_axpy(acc, acc_at, a, a_at, p, n): acc[acc_at + c] = fma(a[a_at + c], p, acc[acc_at +
    c]) for c < n (n whole 8s), 8 lanes at a time: one cached value row (fp16 bits as uint16,
    or float32) weighted by a probability into float32 accumulators."""
    sig = types.void(acc, acc_at, a, a_at, p, n)

    def codegen(context, builder, signature, args):
        acc_p = builder.gep(_data(context, builder, signature.args[0], args[0]), [args[1]])
        a_p = builder.gep(_data(context, builder, signature.args[2], args[2]), [args[3]])
        element = context.get_data_type(signature.args[2].dtype)
        fma = _function(builder, "llvm.fma.v8f32", _V8F32, [_V8F32, _V8F32, _V8F32])
        p8 = _broadcast(builder, args[4], _V8F32)
        with cgutils.for_range(builder, builder.udiv(args[5], _const(8))) as loop:
            at = builder.mul(loop.index, _const(8))
            pointer = builder.bitcast(builder.gep(acc_p, [at]), _V8F32.as_pointer())
            x = _cells_as_f32(builder, a_p, at, element)
            builder.store(builder.call(fma, [x, p8, builder.load(pointer, align=1)]), pointer, align=1)
        return context.get_dummy_value()

    return sig, codegen


def _legacy_row_dot_f32(weight_type):
    """The intrinsic legacy_row_dot_f32 for one legacy weight type."""

    @intrinsic
    def legacy_row_dot_f32(typingctx, raw, row_at, x, nb):
        sig = types.float32(raw, row_at, x, nb)
        return sig, lambda *args: _legacy_row_dot_f32_codegen(weight_type, *args)

    return legacy_row_dot_f32


def _legacy_row_dot_f32_codegen(weight_type, context, builder, signature, args):
    """legacy_row_dot_f32(raw, row_at, x, nb) -> float32: the dot product of the weight row whose
    nb blocks start at byte row_at (unsigned) of raw with float32 x [32 nb], in float32 (--numerics
    f32's one-token product): each block's weights decoded exactly as refllm's decoders decode
    them, in registers, (q - offset) * d, or q * d + m (Q4_1, Q5_1), then four 8-lane fused
    multiply-adds per block; the accumulators summed at the end."""
    block_bytes, qs_at, qh_at, has_min, offset = _LEGACY_LAYOUT[weight_type]
    data = _pointers(context, builder, signature, args)
    raw_p, x_p = data(0), data(2)
    row_at, blocks = args[1], args[3]
    fma = _function(builder, "llvm.fma.v8f32", _V8F32, [_V8F32, _V8F32, _V8F32])
    offsets = ir.Constant(_V32I8, [ir.Constant(_I8, offset)] * 32)
    v32f = ir.VectorType(_F32, 32)

    def fp16_at(at):
        return _fp16_field(builder, raw_p, at)

    accs = [cgutils.alloca_once_value(builder, ir.Constant(_V8F32, None)) for _ in range(4)]
    with cgutils.for_range(builder, blocks) as loop:
        b = loop.index
        at = builder.add(row_at, builder.mul(b, _const(block_bytes)))
        if weight_type == "Q8_0":
            q = builder.load(builder.bitcast(builder.gep(raw_p, [builder.add(at, _const(qs_at))]),
                                             _V32I8.as_pointer()), align=1)
        else:
            q = _nibbles(builder, raw_p, builder.add(at, _const(qs_at)), 16)
            if qh_at is not None:
                q = _with_fifth_bits(builder, q, raw_p, builder.add(at, _const(qh_at)))
            if offset:
                q = builder.sub(q, offsets)
        w = builder.fmul(builder.sitofp(q, v32f), _broadcast(builder, fp16_at(at), v32f))
        if has_min:
            w = builder.fadd(w, _broadcast(builder, fp16_at(builder.add(at, _const(2))), v32f))
        for r in range(4):
            w_r = _shuffle(builder, w, w, list(range(8 * r, 8 * r + 8)))
            x_r = _load(builder, x_p, builder.add(builder.mul(b, _const(32)), _const(8 * r)), _V8F32)
            builder.store(builder.call(fma, [w_r, x_r, builder.load(accs[r])]), accs[r])
    x = [builder.load(slot) for slot in accs]
    lanes = builder.fadd(builder.fadd(x[0], x[1]), builder.fadd(x[2], x[3]))
    h = builder.fadd(_shuffle(builder, lanes, lanes, [4, 5, 6, 7]), _shuffle(builder, lanes, lanes, [0, 1, 2, 3]))

    def lane(i):
        return builder.extract_element(h, ir.Constant(_I32, i))

    return builder.fadd(builder.fadd(lane(0), lane(2)), builder.fadd(lane(1), lane(3)))


legacy_row_dot_f32_q4_0 = _legacy_row_dot_f32("Q4_0")
legacy_row_dot_f32_q4_1 = _legacy_row_dot_f32("Q4_1")
legacy_row_dot_f32_q5_0 = _legacy_row_dot_f32("Q5_0")
legacy_row_dot_f32_q5_1 = _legacy_row_dot_f32("Q5_1")
legacy_row_dot_f32_q8_0 = _legacy_row_dot_f32("Q8_0")


@intrinsic
def i16_block_lanes(typingctx, w, w_at, q, q_at, runs, lanes):
    """i16_block_lanes(w, w_at, q, q_at, runs, lanes): lanes[l] = the int32 sum over the runs r
    of sum(w[w_at + 32 r + 4 l + i] * q[q_at + 32 r + 4 l + i], i = 0..3), for l < 8: vec_dot's
    eight lanes of a K-quant block, from its decoded weights w (int16, sc(e) c(e)) and the
    activations q (int8), by vpmaddwd. Exact: each product is below 2^20 in magnitude and the
    sums below 2^31."""
    sig = types.void(w, w_at, q, q_at, runs, lanes)

    def codegen(context, builder, signature, args):
        data = _pointers(context, builder, signature, args)
        w_p, q_p, lanes_p = data(0, 1), data(2, 3), data(5)
        _, maddwd, _, _ = _instructions(builder)
        v16i8 = ir.VectorType(_I8, 16)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V8I32, None))
        with cgutils.for_range(builder, args[4]) as loop:
            first = builder.mul(loop.index, _const(32))
            halves = []
            for h in (0, 16):
                at = builder.add(first, _const(h))
                w16 = _load(builder, w_p, at, _V16I16)
                q16 = builder.sext(_load(builder, q_p, at, v16i8), _V16I16)
                halves.append(builder.call(maddwd, [w16, q16]))     # pairs p_j of 16 elements
            even = _shuffle(builder, halves[0], halves[1], [0, 2, 4, 6, 8, 10, 12, 14])
            odd = _shuffle(builder, halves[0], halves[1], [1, 3, 5, 7, 9, 11, 13, 15])
            builder.store(builder.add(builder.load(acc), builder.add(even, odd)), acc)
        builder.store(builder.load(acc), builder.bitcast(lanes_p, _V8I32.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def q4_0_row_dot_repack(typingctx, raw, row_at, a, d_a, nb):
    """q4_0_row_dot_repack(raw, row_at, a, d_a, nb) -> float32: repack.cpp's q4_0_8x8 gemv for
    one weight row (nb Q4_0 blocks from byte row_at of raw) and one token's Q8_0 activations
    (a int8 [32 nb], d_a float32 [nb]): per block, the integer sum isum = sum((w_i - 8) a_i)
    (vpmaddubsw, vpmaddwd, the eight lanes added), then acc = fma(float(isum), d_w * d_a, acc),
    one float32 chain as refllm.ggml_cpu.reference.repack computes it."""
    sig = types.float32(raw, row_at, a, d_a, nb)

    def codegen(context, builder, signature, args):
        data = _pointers(context, builder, signature, args)
        raw_p, a_p, d_a_p = data(0), data(2), data(3)
        maddubs, maddwd, _, _ = _instructions(builder)
        fma = _function(builder, "llvm.fma.f32", _F32, [_F32, _F32, _F32])
        ones = ir.Constant(_V16I16, [ir.Constant(_I16, 1)] * 16)
        eights = ir.Constant(_V32I8, [ir.Constant(_I8, 8)] * 32)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
        with cgutils.for_range(builder, args[4]) as loop:
            b = loop.index
            at = builder.add(args[1], builder.mul(b, _const(18)))
            w = _nibbles(builder, raw_p, builder.add(at, _const(2)), 16)
            a32 = _load(builder, a_p, builder.mul(b, _const(32)), _V32I8)
            pairs = builder.sub(builder.call(maddubs, [w, a32]), builder.call(maddubs, [eights, a32]))
            lanes = builder.call(maddwd, [pairs, ones])
            isum = builder.extract_element(lanes, ir.Constant(_I32, 0))
            for i in range(1, 8):
                isum = builder.add(isum, builder.extract_element(lanes, ir.Constant(_I32, i)))
            d_w = _fp16_field(builder, raw_p, at)
            scale = builder.fmul(d_w, builder.load(builder.gep(d_a_p, [b])))
            builder.store(builder.call(fma, [builder.sitofp(isum, _F32), scale, builder.load(acc)]), acc)
        return builder.load(acc)

    return sig, codegen


@intrinsic
def q4_k_row_dot(typingctx, raw, row_at, a, d_a, bsum32, nb):
    """q4_k_row_dot(raw, row_at, a, d_a, bsum32, nb) -> float32: ggml_gemv_q4_K_8x8_q8_K for
    one weight row (nb block_q4_K from byte row_at of raw: d and dmin fp16 at 0 and 2, the 12
    bytes of 6-bit scales and mins at 4, qs[128] at 16) and one token's Q8_K activations (a int8
    [256 nb], d_a float32 [nb], bsum32 int32 [8 nb]: the sums of 32 quants). Per super-block:

        isum = sum_j sc[j] sum(w_i a_i, i in sub-block j)     vpmaddubsw, vpmaddwd by sc[j]
        imin = sum_j mn[j] bsum32[j]                           8 lanes at once
        (sc, mn: get_scale_min_k4's 6-bit scales and mins)
        acc  = fma(float(isum), d_w * d_a, acc);  accm = fma(float(imin), dmin_w * d_a, accm)

    and acc - accm at the end: refllm.ggml_cpu.cpu.repack.q4_k_8x8_q8_k's gemv, the integers
    exact (a pair at most 2 * 15 * 127), the float32 operations the same."""
    sig = types.float32(raw, row_at, a, d_a, bsum32, nb)

    def codegen(context, builder, signature, args):
        data = _pointers(context, builder, signature, args)
        raw_p, a_p, d_a_p, bsum_p = data(0), data(2), data(3), data(4)
        maddubs, maddwd, _, _ = _instructions(builder)
        fma = _function(builder, "llvm.fma.f32", _F32, [_F32, _F32, _F32])
        reduce_add = _function(builder, "llvm.vector.reduce.add.v8i32", _I32, [_V8I32])
        low_mask = ir.Constant(_V32I8, [ir.Constant(_I8, 0x0F)] * 32)
        fours = ir.Constant(_V32I8, [ir.Constant(_I8, 4)] * 32)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
        accm = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))

        def byte(at):
            return builder.zext(builder.load(builder.gep(raw_p, [at])), _I32)

        def fp16_at(at):
            return _fp16_field(builder, raw_p, at)

        def i32(value):
            return ir.Constant(_I32, value)

        with cgutils.for_range(builder, args[5]) as loop:
            b = loop.index
            at = builder.add(args[1], builder.mul(b, _const(144)))
            # get_scale_min_k4's scales: bytes 0..3 and 8..11 of the twelve
            sc = [None] * 8
            for j in range(4):
                s0, hi = byte(builder.add(at, _const(4 + j))), byte(builder.add(at, _const(12 + j)))
                sc[j] = builder.and_(s0, i32(63))
                sc[j + 4] = builder.or_(builder.and_(hi, i32(0x0F)), builder.shl(builder.lshr(s0, i32(6)), i32(4)))
            # imin by vector: the mins of all eight sub-blocks from the 12 scale bytes (read as
            # 16: the 4 after them are the block's own qs), times the sums, added
            s16 = builder.load(builder.bitcast(builder.gep(raw_p, [builder.add(at, _const(4))]),
                                               ir.VectorType(_I8, 16).as_pointer()), align=1)
            mins_at = builder.zext(_shuffle(builder, s16, s16, [4, 5, 6, 7, 8, 9, 10, 11]), _V8I32)
            high_at = builder.zext(_shuffle(builder, s16, s16, [4, 4, 4, 4, 4, 5, 6, 7]), _V8I32)
            mn_vec = builder.or_(
                builder.and_(builder.lshr(mins_at, _i32s([0, 0, 0, 0, 4, 4, 4, 4])), _i32s([63] * 4 + [15] * 4)),
                builder.and_(builder.shl(builder.lshr(high_at, _i32s([6] * 8)), _i32s([4] * 8)),
                             _i32s([0] * 4 + [-1] * 4)))
            bsums = _load(builder, bsum_p, builder.mul(b, _const(8)), _V8I32)
            imin = builder.call(reduce_add, [builder.mul(mn_vec, bsums)])
            lanes = ir.Constant(_V8I32, None)
            for c in range(4):
                qs = builder.load(builder.bitcast(builder.gep(raw_p, [builder.add(at, _const(16 + 32 * c))]),
                                                  _V32I8.as_pointer()), align=1)
                for half, quants in ((0, builder.and_(qs, low_mask)), (1, builder.lshr(qs, fours))):
                    j = 2 * c + half
                    a32 = _load(builder, a_p, builder.add(builder.mul(b, _const(256)), _const(32 * j)), _V32I8)
                    scale = _broadcast(builder, builder.trunc(sc[j], _I16), _V16I16)
                    lanes = builder.add(lanes, builder.call(maddwd, [builder.call(maddubs, [quants, a32]), scale]))
            isum = builder.call(reduce_add, [lanes])
            d_a = builder.load(builder.gep(d_a_p, [b]))
            builder.store(builder.call(fma, [builder.sitofp(isum, _F32), builder.fmul(fp16_at(at), d_a),
                                             builder.load(acc)]), acc)
            builder.store(builder.call(fma, [builder.sitofp(imin, _F32),
                                             builder.fmul(fp16_at(builder.add(at, _const(2))), d_a),
                                             builder.load(accm)]), accm)
        return builder.fsub(builder.load(acc), builder.load(accm))

    return sig, codegen
