"""Numba kernels for the integer dot products of reference/int_dot.py (ggml's vec_dot).

Each kernel gives the same float32 bits as its NumPy reference: the integer sums are exact (in
int32, as in C), and the float32 arithmetic is the reference's, operation for operation and in
its order (Numba never fuses a multiply and an add: fastmath is off).

Signatures, all arrays C-contiguous:
    q4_0, q5_0, q8_0 (w, q, d, out)              Q8_0 activations
    q4_1, q5_1       (w, q, d, s, out)           Q8_1 activations
    q2_k .. q6_k     (w, q, d, bsums, out)       Q8_K activations
    w      uint8 [rows, nb, block_bytes]   the weight blocks, as stored
    q      int8  [n, nb, block_elems]      the activation quants, by block
    d, s   float32 [n, nb]                 the activation scales (and Q8_1 sums)
    bsums  int16 [n, nb, 16]               Q8_K's sums of q in 16s
    out    float32 [n, rows]               filled: out[t, r] = weight row r . activation row t

They are single-threaded (the engine runs Numba with one thread inside its forward pass): for
each weight row, each activation row, each block. What makes them fast (bench/RESULTS.md has
the figures; each point was measured against the alternative):
- 3-D block views, and inner loop trip counts taken from array shapes: LLVM then vectorizes
  the integer loops (vpmaddwd) and Numba emits no negative-index wraparound code for the
  indices. Flat offsets into 2-D arrays were 2.5x slower on Q4_1.
- Every integer operation is cast back to int32, `I32(a OP b)`, constants included: Numba
  types int32 OP int32 as int64, and 64-bit vector arithmetic was 1.5-2x slower.
- fp16 scales are looked up in a table (`_f16`), 2.5x faster than decoding their bits.
- Q5_0/Q5_1 decode a weight row to int8 first and then take Q8_0's dot product; the 5th
  bits are tested against BIT[j] masks rather than shifted out (both 1.2-1.4x).
- The K-quants reach the C's eight int32 lanes (position mod 8) through 32 partial sums, one
  loop of 32 with eight products each straight from the block's bytes (see `_lanes`), 3x
  faster than accumulating the lanes themselves.
"""

from __future__ import annotations

import numpy as np
from numba import njit

I32 = np.int32
F32 = np.float32

# fp16 bits -> float32, the way the NumPy reference decodes (fields.f16: NumPy's astype), for
# every half; ggml keeps the same table (ggml_table_f32_f16) for CPUs without F16C. A lookup
# is 2.5x faster here than decoding the bits (fp.f16_to_f32) in the kernels' scalar code. Numba
# freezes it into each kernel as a constant.
FP16_TO_F32 = np.arange(1 << 16, dtype=np.uint32).astype("<u2").view("<f2").astype(np.float32)


@njit(inline="always", cache=True)
def _f16(w, r, b, at):
    """The little-endian fp16 at byte `at` of block (r, b), as float32."""
    return FP16_TO_F32[I32(w[r, b, at]) | I32(I32(w[r, b, at + 1]) << I32(8))]


# ---- the legacy types: one integer sum per 32-weight block -------------------------------------
# Integer operations are written I32(a OP b): Numba types int32 OP int32 as int64.

@njit(cache=True)
def q4_0(w, q, d, out):
    """Q4_0 weights . Q8_0 activations into out [n, rows], bit for bit reference.int_dot.q4_0."""
    rows, nb = w.shape[0], w.shape[1]
    half = q.shape[2] // 2                                     # 16
    for r in range(rows):
        for t in range(q.shape[0]):
            sumf = F32(0)
            for b in range(nb):
                sumi0 = I32(0)
                sumi1 = I32(0)
                for j in range(half):
                    byte = I32(w[r, b, 2 + j])
                    v0 = I32(I32(byte & I32(0x0F)) - I32(8))
                    v1 = I32(I32(byte >> I32(4)) - I32(8))
                    sumi0 = I32(sumi0 + I32(v0 * I32(q[t, b, j])))
                    sumi1 = I32(sumi1 + I32(v1 * I32(q[t, b, half + j])))
                sumf += F32(I32(sumi0 + sumi1)) * _f16(w, r, b, 0) * d[t, b]
            out[t, r] = sumf


@njit(cache=True)
def q4_1(w, q, d, s, out):
    """Q4_1 weights . Q8_1 activations into out [n, rows], bit for bit reference.int_dot.q4_1."""
    rows, nb = w.shape[0], w.shape[1]
    half = q.shape[2] // 2                                     # 16
    for r in range(rows):
        for t in range(q.shape[0]):
            sumf = F32(0)
            for b in range(nb):
                sumi0 = I32(0)
                sumi1 = I32(0)
                for j in range(half):
                    byte = I32(w[r, b, 4 + j])
                    sumi0 = I32(sumi0 + I32(I32(byte & I32(0x0F)) * I32(q[t, b, j])))
                    sumi1 = I32(sumi1 + I32(I32(byte >> I32(4)) * I32(q[t, b, half + j])))
                sumf += (_f16(w, r, b, 0) * d[t, b]) * F32(I32(sumi0 + sumi1)) + _f16(w, r, b, 2) * s[t, b]
            out[t, r] = sumf


@njit(inline="always", cache=True)
def _qh(w, r, b, at):
    """The little-endian uint32 `qh` at byte `at` of block (r, b), as int32 bits."""
    return I32(I32(w[r, b, at]) | I32(I32(w[r, b, at + 1]) << I32(8))
               | I32(I32(w[r, b, at + 2]) << I32(16)) | I32(I32(w[r, b, at + 3]) << I32(24)))


# BIT[j] = 1 << j, as int32 bits: testing qh & BIT[j] keeps the loops in 32-bit lanes, where
# (qh >> j) & 1 was shifted in 64-bit ones (Numba's types) and ran 1.4x slower.
BIT = (np.uint32(1) << np.arange(32, dtype=np.uint32)).view(np.int32)


@njit(inline="always", cache=True)
def _fifth_bit(qh, j):
    """Bit j of qh, moved to bit 4: the 5th bit of weight j (j = 0..31)."""
    return I32(16) if I32(qh & BIT[j]) != I32(0) else I32(0)


# Q5_0 and Q5_1 decode a weight row to int8 first, then take Q8_0's dot product with each
# activation row: 1.2x faster than testing the 5th bits inside the dot (and done once for n > 1).

@njit(inline="always", cache=True)
def _q5_row(w, r, qh_at, qs_at, offset, a):
    """Row r's 5-bit quants, minus `offset`, into a int8 [nb, 32]."""
    half = a.shape[1] // 2                                     # 16
    for b in range(w.shape[1]):
        qh = _qh(w, r, b, qh_at)
        for j in range(half):
            byte = I32(w[r, b, qs_at + j])
            a[b, j] = np.int8(I32(I32(I32(byte & I32(0x0F)) | _fifth_bit(qh, j)) - offset))
            a[b, half + j] = np.int8(I32(I32(I32(byte >> I32(4)) | _fifth_bit(qh, j + 16)) - offset))


@njit(inline="always", cache=True)
def _block_dot(a, q, t, b):
    """sum over j of a[b, j] * q[t, b, j], in int32."""
    sumi = I32(0)
    for j in range(q.shape[2]):
        sumi = I32(sumi + I32(I32(a[b, j]) * I32(q[t, b, j])))
    return sumi


@njit(cache=True)
def q5_0(w, q, d, out):
    """Q5_0 weights . Q8_0 activations into out [n, rows], bit for bit reference.int_dot.q5_0."""
    nb = w.shape[1]
    a = np.empty((nb, q.shape[2]), np.int8)
    for r in range(w.shape[0]):
        _q5_row(w, r, 2, 6, I32(16), a)                        # (nibble | 5th bit << 4) - 16
        for t in range(q.shape[0]):
            sumf = F32(0)
            for b in range(nb):
                sumf += (_f16(w, r, b, 0) * d[t, b]) * F32(_block_dot(a, q, t, b))
            out[t, r] = sumf


@njit(cache=True)
def q5_1(w, q, d, s, out):
    """Q5_1 weights . Q8_1 activations into out [n, rows], bit for bit reference.int_dot.q5_1."""
    nb = w.shape[1]
    a = np.empty((nb, q.shape[2]), np.int8)
    for r in range(w.shape[0]):
        _q5_row(w, r, 4, 8, I32(0), a)                         # nibble | 5th bit << 4
        for t in range(q.shape[0]):
            sumf = F32(0)
            for b in range(nb):
                sumi = _block_dot(a, q, t, b)
                sumf += (_f16(w, r, b, 0) * d[t, b]) * F32(sumi) + _f16(w, r, b, 2) * s[t, b]
            out[t, r] = sumf


@njit(cache=True)
def q8_0(w, q, d, out):
    """Q8_0 weights . Q8_0 activations into out [n, rows], bit for bit reference.int_dot.q8_0."""
    rows, nb = w.shape[0], w.shape[1]
    for r in range(rows):
        for t in range(q.shape[0]):
            sumf = F32(0)
            for b in range(nb):
                sumi = I32(0)
                for j in range(q.shape[2]):                    # 32
                    sumi = I32(sumi + I32(I32(np.int8(w[r, b, 2 + j])) * I32(q[t, b, j])))
                sumf += F32(sumi) * (_f16(w, r, b, 0) * d[t, b])
            out[t, r] = sumf


# ---- the K-quants: the C's eight int32 lanes, by way of 32 partial sums -----------------------
# The C's aux32[l] sums scale * q8 * quant over the positions p = l (mod 8) of a 256-weight block.
# Each kernel first sums the 8 products at p = i, i + 32, ..., i + 224 into prod[i] (i < 32),
# reading the quants straight from the block's bytes (one loop of 32, eight products each,
# which vectorizes), then `_lanes` adds prod[l], prod[l + 8], prod[l + 16], prod[l + 24].
# Integer sums are exact, so this regrouping gives the C's aux32 exactly.

@njit(inline="always", cache=True)
def _lanes(prod, aux32):
    """aux32[l] = prod[l] + prod[l + 8] + prod[l + 16] + prod[l + 24]."""
    for l in range(8):
        aux32[l] = I32(I32(prod[l] + prod[l + 8]) + I32(prod[l + 16] + prod[l + 24]))


@njit(inline="always", cache=True)
def _add_lanes(sums, t, d, aux32):
    """sums[t, l] += d * aux32[l], the C's `sums[l] += d * aux32[l]`."""
    for l in range(8):
        sums[t, l] += d * F32(aux32[l])


@njit(inline="always", cache=True)
def _end_lanes(sumf, sums, out, r):
    """out[t, r] = sumf[t] + sums[t, 0] + ... + sums[t, 7], added in that order."""
    for t in range(out.shape[0]):
        total = sumf[t]
        for l in range(8):
            total += sums[t, l]
        out[t, r] = total


@njit(inline="always", cache=True)
def _q2_product(bits, scale, q8):
    """scale * (bits & 3) * q8, in int32."""
    return I32(scale * I32(I32(I32(bits) & I32(3)) * I32(q8)))


@njit(cache=True)
def q2_k(w, q, d, bsums, out):
    """Q2_K weights . Q8_K activations into out [n, rows], bit for bit reference.int_dot.q2_k."""
    rows, nb, n = w.shape[0], w.shape[1], q.shape[0]
    half = q.shape[2] // 16                                    # 16: i < 16 and i >= 16 differ in scale
    sc = np.empty(16, np.int32)
    for r in range(rows):
        for t in range(n):
            out[t, r] = 0
        for b in range(nb):
            for j in range(16):                                # scales[j] & 15: sub-block j's scale
                sc[j] = I32(I32(w[r, b, j]) & I32(0x0F))
            x_d, x_dmin = _f16(w, r, b, 80), _f16(w, r, b, 82)
            for t in range(n):
                isum = I32(0)
                for k in range(2):                             # weight 128h + 32s + 16k + l
                    for l in range(half):
                        i = 16 * k + l
                        for h in range(2):                     # its 2 bits: bits 2s.. of qs[32h + i]
                            q2 = I32(w[r, b, 16 + 32 * h + i])
                            j, e = 8 * h + k, 128 * h + i      # sub-block 8h + 2s + k, weight e + 32s
                            isum = I32(isum + _q2_product(q2, sc[j], q[t, b, e]))
                            isum = I32(isum + _q2_product(q2 >> I32(2), sc[j + 2], q[t, b, e + 32]))
                            isum = I32(isum + _q2_product(q2 >> I32(4), sc[j + 4], q[t, b, e + 64]))
                            isum = I32(isum + _q2_product(q2 >> I32(6), sc[j + 6], q[t, b, e + 96]))
                summs = I32(0)
                for j in range(16):
                    summs = I32(summs + I32(I32(bsums[t, b, j]) * I32(I32(w[r, b, j]) >> I32(4))))
                dall = d[t, b] * x_d
                dmin = d[t, b] * x_dmin
                out[t, r] += dall * F32(isum) - dmin * F32(summs)


@njit(inline="always", cache=True)
def _q3_scale(w, r, b, j):
    """Q3_K's 6-bit scale j (0..15) minus 32: nibble j of scales[0..7], top bits from 8..11."""
    nib = I32(w[r, b, 96 + j % 8])
    low = I32(nib & I32(0x0F)) if j < 8 else I32(nib >> I32(4))
    high = I32(I32(I32(w[r, b, 104 + j % 4]) >> I32(2 * (j // 4))) & I32(3))
    return I32(I32(low | I32(high << I32(4))) - I32(32))


@njit(inline="always", cache=True)
def _q3_product(low, high, scale, q8):
    """scale * ((low & 3) - ((high & 1) ? 0 : 4)) * q8, in int32."""
    q3 = I32(I32(I32(low) & I32(3)) - (I32(0) if I32(I32(high) & I32(1)) != I32(0) else I32(4)))
    return I32(scale * I32(q3 * I32(q8)))


@njit(cache=True)
def q3_k(w, q, d, bsums, out):
    """Q3_K weights . Q8_K activations into out [n, rows], bit for bit reference.int_dot.q3_k."""
    rows, nb, n = w.shape[0], w.shape[1], q.shape[0]
    half = q.shape[2] // 16                                    # 16
    sc = np.empty(16, np.int32)
    prod = np.empty(q.shape[2] // 8, np.int32)
    aux32 = np.empty(8, np.int32)
    sums = np.empty((n, 8), np.float32)
    sumf = np.zeros(n, np.float32)
    for r in range(rows):
        sums[:] = 0
        for b in range(nb):
            for j in range(16):
                sc[j] = _q3_scale(w, r, b, j)
            x_d = _f16(w, r, b, 108)
            for t in range(n):
                for k in range(2):                             # weight 128h + 32s + 16k + l
                    for l in range(half):
                        i = 16 * k + l
                        high = I32(w[r, b, i])                 # its high bit: bit 4h + s of hmask[i]
                        acc = I32(0)
                        for h in range(2):
                            low = I32(w[r, b, 32 + 32 * h + i])      # its low 2 bits: bits 2s.. of qs[32h + i]
                            j, e = 8 * h + k, 128 * h + i      # sub-block 8h + 2s + k, weight e + 32s
                            acc = I32(acc + _q3_product(low, high, sc[j], q[t, b, e]))
                            acc = I32(acc + _q3_product(low >> I32(2), high >> I32(1), sc[j + 2], q[t, b, e + 32]))
                            acc = I32(acc + _q3_product(low >> I32(4), high >> I32(2), sc[j + 4], q[t, b, e + 64]))
                            acc = I32(acc + _q3_product(low >> I32(6), high >> I32(3), sc[j + 6], q[t, b, e + 96]))
                            high = I32(high >> I32(4))
                        prod[i] = acc
                _lanes(prod, aux32)
                _add_lanes(sums, t, x_d * d[t, b], aux32)
        _end_lanes(sumf, sums, out, r)


@njit(inline="always", cache=True)
def _scale_min_k4(w, r, b, j):
    """Q4_K/Q5_K's 6-bit scale and min of sub-block j (get_scale_min_k4); scales at byte 4."""
    if j < 4:
        return I32(I32(w[r, b, 4 + j]) & I32(0x3F)), I32(I32(w[r, b, 8 + j]) & I32(0x3F))
    low, sc_top, m_top = I32(w[r, b, 8 + j]), I32(w[r, b, j]), I32(w[r, b, 4 + j])
    return (I32(I32(low & I32(0x0F)) | I32(I32(sc_top >> I32(6)) << I32(4))),
            I32(I32(low >> I32(4)) | I32(I32(m_top >> I32(6)) << I32(4))))


@njit(inline="always", cache=True)
def _q45_k_end(w, q, d, bsums, r, b, t, mins, prod, aux32, sums, sumf):
    """Q4_K/Q5_K after prod is filled for block b and row t: the lanes, and
    sumi = sum_j bsums[j] * mins[j/2] (as mins[i] * (bsums[2i] + bsums[2i+1]): exact)."""
    sumi = I32(0)
    for i in range(8):
        pair = I32(I32(bsums[t, b, 2 * i]) + I32(bsums[t, b, 2 * i + 1]))
        sumi = I32(sumi + I32(pair * mins[i]))
    _lanes(prod, aux32)
    _add_lanes(sums, t, _f16(w, r, b, 0) * d[t, b], aux32)
    sumf[t] -= (_f16(w, r, b, 2) * d[t, b]) * F32(sumi)


@njit(cache=True)
def q4_k(w, q, d, bsums, out):
    """Q4_K weights . Q8_K activations into out [n, rows], bit for bit reference.int_dot.q4_k."""
    rows, nb, n = w.shape[0], w.shape[1], q.shape[0]
    m = q.shape[2] // 8                                        # 32
    sc = np.empty(8, np.int32)
    mins = np.empty(8, np.int32)
    prod = np.empty(m, np.int32)
    aux32 = np.empty(8, np.int32)
    sums = np.empty((n, 8), np.float32)
    sumf = np.empty(n, np.float32)
    for r in range(rows):
        sums[:] = 0
        sumf[:] = 0
        for b in range(nb):
            for j in range(8):
                sc[j], mins[j] = _scale_min_k4(w, r, b, j)
            for t in range(n):
                for i in range(m):                             # weight 64c + 32u + i:
                    acc = I32(0)                               # nibble u of qs[32c + i]
                    for c in range(4):
                        byte = I32(w[r, b, 16 + 32 * c + i])
                        q1, q2 = I32(byte & I32(0x0F)), I32(byte >> I32(4))
                        acc = I32(acc + I32(sc[2 * c] * I32(q1 * I32(q[t, b, 64 * c + i]))))
                        acc = I32(acc + I32(sc[2 * c + 1] * I32(q2 * I32(q[t, b, 64 * c + 32 + i]))))
                    prod[i] = acc
                _q45_k_end(w, q, d, bsums, r, b, t, mins, prod, aux32, sums, sumf)
        _end_lanes(sumf, sums, out, r)


@njit(cache=True)
def q5_k(w, q, d, bsums, out):
    """Q5_K weights . Q8_K activations into out [n, rows], bit for bit reference.int_dot.q5_k."""
    rows, nb, n = w.shape[0], w.shape[1], q.shape[0]
    m = q.shape[2] // 8                                        # 32
    sc = np.empty(8, np.int32)
    mins = np.empty(8, np.int32)
    prod = np.empty(m, np.int32)
    aux32 = np.empty(8, np.int32)
    sums = np.empty((n, 8), np.float32)
    sumf = np.empty(n, np.float32)
    for r in range(rows):
        sums[:] = 0
        sumf[:] = 0
        for b in range(nb):
            for j in range(8):
                sc[j], mins[j] = _scale_min_k4(w, r, b, j)
            for t in range(n):
                for i in range(m):                             # weight 64c + 32u + i: nibble u of
                    high = I32(w[r, b, 16 + i])                # qs[32c + i], 5th bit: bit 2c+u of qh[i]
                    acc = I32(0)
                    for c in range(4):
                        byte = I32(w[r, b, 48 + 32 * c + i])
                        q1 = I32(I32(byte & I32(0x0F)) | _fifth_bit(high, 2 * c))
                        q2 = I32(I32(byte >> I32(4)) | _fifth_bit(high, 2 * c + 1))
                        acc = I32(acc + I32(sc[2 * c] * I32(q1 * I32(q[t, b, 64 * c + i]))))
                        acc = I32(acc + I32(sc[2 * c + 1] * I32(q2 * I32(q[t, b, 64 * c + 32 + i]))))
                    prod[i] = acc
                _q45_k_end(w, q, d, bsums, r, b, t, mins, prod, aux32, sums, sumf)
        _end_lanes(sumf, sums, out, r)


@njit(inline="always", cache=True)
def _q6_product(low, high, scale, q8):
    """scale * ((low | (high & 3) << 4) - 32) * q8, in int32."""
    q6 = I32(I32(I32(low) | I32(I32(I32(high) & I32(3)) << I32(4))) - I32(32))
    return I32(scale * I32(q6 * I32(q8)))


@njit(cache=True)
def q6_k(w, q, d, bsums, out):
    """Q6_K weights . Q8_K activations into out [n, rows], bit for bit reference.int_dot.q6_k."""
    rows, nb, n = w.shape[0], w.shape[1], q.shape[0]
    half = q.shape[2] // 16                                    # 16
    sc = np.empty(16, np.int32)
    prod = np.empty(q.shape[2] // 8, np.int32)
    aux32 = np.empty(8, np.int32)
    sums = np.empty((n, 8), np.float32)
    sumf = np.zeros(n, np.float32)
    for r in range(rows):
        sums[:] = 0
        for b in range(nb):
            for j in range(16):
                sc[j] = I32(np.int8(w[r, b, 192 + j]))
            x_d = _f16(w, r, b, 208)
            for t in range(n):
                for k in range(2):                             # i = 16k + l: the weights 128h + 32s + i
                    for l in range(half):                      # (s = 0..3) of sub-blocks 8h + 2s + k
                        i = 16 * k + l
                        acc = I32(0)
                        for h in range(2):
                            ql0 = I32(w[r, b, 64 * h + i])          # low 4 bits: s = 0, 2
                            ql1 = I32(w[r, b, 64 * h + 32 + i])     # s = 1, 3
                            qh = I32(w[r, b, 128 + 32 * h + i])     # high 2 bits: bits 2s..
                            j, e = 8 * h + k, 128 * h + i      # sub-block 8h + 2s + k, weight e + 32s
                            acc = I32(acc + _q6_product(ql0 & I32(0x0F), qh, sc[j], q[t, b, e]))
                            acc = I32(acc + _q6_product(ql1 & I32(0x0F), qh >> I32(2), sc[j + 2], q[t, b, e + 32]))
                            acc = I32(acc + _q6_product(ql0 >> I32(4), qh >> I32(4), sc[j + 4], q[t, b, e + 64]))
                            acc = I32(acc + _q6_product(ql1 >> I32(4), qh >> I32(6), sc[j + 6], q[t, b, e + 96]))
                        prod[i] = acc
                _lanes(prod, aux32)
                _add_lanes(sums, t, x_d * d[t, b], aux32)
        _end_lanes(sumf, sums, out, r)
