"""Integer dot products of quantized weight rows with quantized activations, as ggml's CPU does.

A CPU MUL_MAT rounds its activations to the weight type's vec_dot_type (reference/activations.py)
and then, for every weight row and activation row, runs `ggml_vec_dot_<w>_<a>`: integer sums of
weight quants times activation quants, one per block (or per 16/32 weights for the K-quants),
which float32 scales then turn into the result. These functions follow the portable C of
ggml-cpu/quants.c, `ggml_vec_dot_<w>_<a>_generic`, term for term:

    weights   activations  per block (sums of products of quants in int32), then in float32
    Q4_0      Q8_0         sumi = sum(w * a);  sumf += (sumi * d_w) * d_a
    Q5_0      Q8_0         sumi = sum(w * a);  sumf += (d_w * d_a) * sumi
    Q8_0      Q8_0         sumi = sum(w * a);  sumf += sumi * (d_w * d_a)
    Q4_1 Q5_1 Q8_1         sumi = sum(w * a);  sumf += (d_w * d_a) * sumi + m_w * s_a
    Q2_K      Q8_K         isum (scales x quants), summs (mins x bsums);
                           sumf += (d_a * d) * isum - (d_a * dmin) * summs
    Q3_K Q6_K Q8_K         aux32[8]: eight int32 lanes (position mod 8);  sums[l] += (d * d_a) * aux32[l]
    Q4_K Q5_K Q8_K         the same lanes, and sumi = mins x bsums;  sumf -= (dmin * d_a) * sumi
(the three Q8_0 orders are the C's: (float)sumi * d_w * d_a, (d_w * d_a) * sumi, sumi * (d_w * d_a))

The float32 arithmetic is C's, with no fused multiply-add, in the C's order: one accumulator
per output, blocks added first to last; where the C keeps eight float lanes (`sums[8]`,
Q3_K..Q6_K) they are kept too and added into `sumf` at the end, lane 0 first. The integer sums
are exact, so their order is free. Each function returns exactly what the generic C returns.

ggml's x86 build runs its AVX2 versions instead (arch/x86/quants.c): the same integer sums, but
the float combination is fused (`_mm256_fmadd_ps`) into eight float lanes and then added
pairwise, so llama.cpp's own results differ from these in the last bits of float32 summation.

Every function takes (raw, rows, cols, act):
    raw    uint8 [rows * row_bytes]: the weight matrix's blocks as stored (little-endian)
    rows   output features (the weight matrix is [rows, cols] in numpy order)
    cols   inputs per row, a whole number of the weight type's blocks
    act    QuantizedRows of the weight type's vec_dot_type, [n, cols]
and returns float32 [n, rows]: y[t, r] = vec_dot(weight row r, activation row t).

The block layouts are repeated from reference/legacy.py and reference/kquants.py, whose
helpers decode the quants here too. Memory: the integer products of ROW_CHUNK weight rows are
made at once; this module is the readable reference, not the fast path (cpu/int_dot.py).
"""

from __future__ import annotations

import numpy as np

from refllm.kernels.reference.activations import QuantizedRows
from refllm.kernels.reference.fields import f16, nibbles
from refllm.kernels.reference.kquants import _planes, _scale_min_k4

F32 = np.float32
I32 = np.int32

# Weight rows whose integer products are formed at once (bounds this module's memory).
ROW_CHUNK = 512


def _row_blocks(raw, rows: int, cols: int, block_bytes: int, block_elems: int) -> np.ndarray:
    """raw as uint8 [rows, blocks per row, block_bytes], after checking the sizes."""
    raw = np.asarray(raw, np.uint8).reshape(-1)
    if cols % block_elems:
        raise ValueError(f"rows of {cols} weights are not whole blocks of {block_elems}")
    nb = cols // block_elems
    if raw.size != rows * nb * block_bytes:
        raise ValueError(f"{raw.size} bytes is not {rows} rows of {nb} blocks of {block_bytes} bytes")
    return raw.reshape(rows, nb, block_bytes)


def _check_act(act: QuantizedRows, cols: int, needs: str | None = None) -> None:
    if act.q.ndim != 2 or act.q.shape[1] != cols:
        raise ValueError(f"activations are {act.q.shape}, not [n, {cols}]")
    if act.d.shape != (act.q.shape[0], act.q.shape[1] // (32 if needs != "bsums" else 256)):
        raise ValueError(f"activation scales are {act.d.shape}, not one per block")
    if needs is not None and getattr(act, needs) is None:
        raise ValueError(f"these weights need activations with `{needs}` (the wrong vec_dot_type)")


def _by_row_chunks(rows: int, n: int, product) -> np.ndarray:
    """y float32 [n, rows], filled by product(start, stop) -> float32 [n, stop - start]."""
    y = np.empty((n, rows), F32)
    for start in range(0, rows, ROW_CHUNK):
        stop = min(rows, start + ROW_CHUNK)
        y[:, start:stop] = product(start, stop)
    return y


def _block_sums(w: np.ndarray, q: np.ndarray) -> np.ndarray:
    """int32 sum over each block of w * q: w int32 [rows, nb, size], q int8 [n, nb * size]
    -> int32 [n, rows, nb]."""
    n = q.shape[0]
    return np.einsum("rbj,nbj->nrb", w, q.reshape(n, w.shape[1], w.shape[2]).astype(I32))


def _lane_sums(w: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The K-quants' aux32: int32 [n, rows, nb, 8], lane l the sum of w * q over the positions
    p = l (mod 8) of each 256-weight block. w int32 [rows, nb, 256] (scale already applied),
    q int8 [n, nb * 256]."""
    n, (rows, nb, _) = q.shape[0], w.shape
    return np.einsum("rbgl,nbgl->nrbl", w.reshape(rows, nb, 32, 8),
                     q.reshape(n, nb, 32, 8).astype(I32))


# ---- the legacy types, against Q8_0 / Q8_1 ---------------------------------------------------

def _legacy(raw, rows, cols, act, block_bytes, quants, combine, needs=None):
    """The shared loop of the 32-weight types: quants(blocks) -> (int32 [r, nb, 32], d, m);
    combine(sumf, sumi, d_w, m_w, b) adds block b into sumf."""
    blocks = _row_blocks(raw, rows, cols, block_bytes, 32)
    _check_act(act, cols, needs)

    def product(start, stop):
        part = blocks[start:stop]
        flat = part.reshape(-1, block_bytes)
        w, d_w, m_w = quants(flat)
        r, nb = part.shape[:2]
        sumi = _block_sums(w.reshape(r, nb, 32), act.q)                  # [n, r, nb]
        d_w = d_w.reshape(r, nb)
        m_w = None if m_w is None else m_w.reshape(r, nb)
        sumf = np.zeros((act.q.shape[0], r), F32)                         # float sumf = 0
        for b in range(nb):                                               # for (ib = 0; ib < nb; ++ib)
            sumf = combine(sumf, sumi[:, :, b].astype(F32), d_w[:, b], None if m_w is None else m_w[:, b], b)
        return sumf

    return _by_row_chunks(rows, act.q.shape[0], product)


def q4_0(raw, rows: int, cols: int, act: QuantizedRows) -> np.ndarray:
    """Q4_0 weights . Q8_0 activations, as ggml_vec_dot_q4_0_q8_0_generic: float32 [n, rows].

    block_q4_0, 18 bytes, 32 weights:  ggml_half d; uint8_t qs[16];   (qs[j]: weights j, j+16)
    w = nibble - 8;  sumf += sumi * d_w * d_a     (C: ((float)sumi * d_w) * d_a)
    """
    def quants(flat):
        return nibbles(flat[:, 2:18]).astype(I32) - 8, f16(flat, 0)[:, 0], None

    def combine(sumf, sumi, d_w, m_w, b):
        return sumf + sumi * d_w * act.d[:, b:b + 1]
    return _legacy(raw, rows, cols, act, 18, quants, combine)


def q4_1(raw, rows: int, cols: int, act: QuantizedRows) -> np.ndarray:
    """Q4_1 weights . Q8_1 activations, as ggml_vec_dot_q4_1_q8_1_generic: float32 [n, rows].

    block_q4_1, 20 bytes, 32 weights:  ggml_half d; ggml_half m; uint8_t qs[16];
    w = nibble;  sumf += (d_w * d_a) * sumi + m_w * s_a
    """
    def quants(flat):
        return nibbles(flat[:, 4:20]).astype(I32), f16(flat, 0)[:, 0], f16(flat, 2)[:, 0]

    def combine(sumf, sumi, d_w, m_w, b):
        d_a, s_a = act.d[:, b:b + 1], act.s[:, b:b + 1]
        return sumf + ((d_w * d_a) * sumi + m_w * s_a)
    return _legacy(raw, rows, cols, act, 20, quants, combine, needs="s")


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """(n, 4) bytes of a little-endian uint32 -> (n, 32) int32: bit j, the 5th bit of weight j."""
    return np.unpackbits(qh, axis=1, bitorder="little").astype(I32) << 4


def q5_0(raw, rows: int, cols: int, act: QuantizedRows) -> np.ndarray:
    """Q5_0 weights . Q8_0 activations, as ggml_vec_dot_q5_0_q8_0_generic: float32 [n, rows].

    block_q5_0, 22 bytes, 32 weights:  ggml_half d; uint8_t qh[4]; uint8_t qs[16];
    w = (nibble | 5th bit << 4) - 16;  sumf += (d_w * d_a) * sumi
    """
    def quants(flat):
        return (nibbles(flat[:, 6:22]).astype(I32) | _fifth_bits(flat[:, 2:6])) - 16, f16(flat, 0)[:, 0], None

    def combine(sumf, sumi, d_w, m_w, b):
        return sumf + (d_w * act.d[:, b:b + 1]) * sumi
    return _legacy(raw, rows, cols, act, 22, quants, combine)


def q5_1(raw, rows: int, cols: int, act: QuantizedRows) -> np.ndarray:
    """Q5_1 weights . Q8_1 activations, as ggml_vec_dot_q5_1_q8_1_generic: float32 [n, rows].

    block_q5_1, 24 bytes, 32 weights:  ggml_half d; ggml_half m; uint8_t qh[4]; uint8_t qs[16];
    w = nibble | 5th bit << 4;  sumf += (d_w * d_a) * sumi + m_w * s_a
    """
    def quants(flat):
        w = nibbles(flat[:, 8:24]).astype(I32) | _fifth_bits(flat[:, 4:8])
        return w, f16(flat, 0)[:, 0], f16(flat, 2)[:, 0]

    def combine(sumf, sumi, d_w, m_w, b):
        d_a, s_a = act.d[:, b:b + 1], act.s[:, b:b + 1]
        return sumf + ((d_w * d_a) * sumi + m_w * s_a)
    return _legacy(raw, rows, cols, act, 24, quants, combine, needs="s")


def q8_0(raw, rows: int, cols: int, act: QuantizedRows) -> np.ndarray:
    """Q8_0 weights . Q8_0 activations, as ggml_vec_dot_q8_0_q8_0_generic: float32 [n, rows].

    block_q8_0, 34 bytes, 32 weights:  ggml_half d; int8_t qs[32];
    w = qs;  sumf += sumi * (d_w * d_a)
    """
    def quants(flat):
        return flat[:, 2:34].view(np.int8).astype(I32), f16(flat, 0)[:, 0], None

    def combine(sumf, sumi, d_w, m_w, b):
        return sumf + sumi * (d_w * act.d[:, b:b + 1])
    return _legacy(raw, rows, cols, act, 34, quants, combine)


# ---- the K-quants, against Q8_K ----------------------------------------------------------------
# block_q8_K { float d; int8_t qs[256]; int16_t bsums[16]; }: act.d [n, nb], act.bsums [n, nb*16]

def _kquant(raw, rows, cols, act, block_bytes, per_rows):
    """The shared frame of the K-quants: per_rows(blocks [r, nb, block_bytes], n) -> float32
    [n, r], the C's loop over the blocks of r weight rows (see each type)."""
    blocks = _row_blocks(raw, rows, cols, block_bytes, 256)
    _check_act(act, cols, "bsums")
    n = act.q.shape[0]
    return _by_row_chunks(rows, n, lambda start, stop: per_rows(blocks[start:stop], n))


def _sum_lanes(sumf: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """for (l = 0; l < 8; ++l) sumf += sums[l];   sums float32 [n, r, 8]."""
    for lane in range(8):
        sumf = sumf + sums[:, :, lane]
    return sumf


def q2_k(raw, rows: int, cols: int, act: QuantizedRows) -> np.ndarray:
    """Q2_K weights . Q8_K activations, as ggml_vec_dot_q2_K_q8_K_generic: float32 [n, rows].

    block_q2_K, 84 bytes, 256 weights in 16 sub-blocks of 16:
        uint8_t   scales[16];  // sub-block j: low nibble = scale, high nibble = min
        uint8_t   qs[64];      // 2 bits: weight 128h + 32s + l is bits 2s.. of qs[32h + l]
        ggml_half d;           // super-block scale of the scales
        ggml_half dmin;        // super-block scale of the mins
    Per block:  summs = sum_j bsums[j] * (scales[j] >> 4)
                isum  = sum_e (scales[e/16] & 15) * q2[e] * q8[e]
                dall = d_a * d;  dmin' = d_a * dmin;  sumf += dall * isum - dmin' * summs
    """
    def per_rows(part, n):
        r, nb = part.shape[:2]
        flat = part.reshape(-1, 84)
        sc = flat[:, 0:16].astype(I32)                                        # [r*nb, 16]
        q2 = _planes(flat[:, 16:80], 2, 32).astype(I32)                       # [r*nb, 256]
        w = (q2.reshape(-1, 16, 16) * (sc & 0xF)[:, :, None]).reshape(r, nb, 256)
        isum = _block_sums(w, act.q)                                          # [n, r, nb]
        summs = np.einsum("rbj,nbj->nrb", (sc >> 4).reshape(r, nb, 16),
                          act.bsums.reshape(n, nb, 16).astype(I32))           # [n, r, nb]
        d, dmin = f16(flat, 80).reshape(r, nb), f16(flat, 82).reshape(r, nb)
        sumf = np.zeros((n, r), F32)
        for b in range(nb):
            dall = act.d[:, b:b + 1] * d[:, b]                                # [n, r]
            dmin_b = act.d[:, b:b + 1] * dmin[:, b]
            sumf = sumf + (dall * isum[:, :, b].astype(F32) - dmin_b * summs[:, :, b].astype(F32))
        return sumf
    return _kquant(raw, rows, cols, act, 84, per_rows)


def _lanes_into_sums(d_w: np.ndarray, aux32: np.ndarray, act: QuantizedRows, b: int,
                     sums: np.ndarray) -> np.ndarray:
    """sums[l] += (d_w * d_a) * aux32[l] for block b: d_w float32 [r], aux32 int32 [n, r, 8]."""
    d = d_w[None, :] * act.d[:, b:b + 1]                                      # [n, r]
    return sums + d[:, :, None] * aux32.astype(F32)


def _q3_scales(scales: np.ndarray) -> np.ndarray:
    """Q3_K's 12 bytes -> the 16 6-bit scales, minus 32, int32 [.., 16] (the C's auxs shuffle):
    the low 4 bits of scale j are nibble j of scales[0..7] (low nibbles, then high nibbles),
    the top 2 bits are bits 2(j/4).. of scales[8 + j % 4]."""
    return (nibbles(scales[:, 0:8]) | (_planes(scales[:, 8:12], 2, 4) << 4)).astype(I32) - 32


def q3_k(raw, rows: int, cols: int, act: QuantizedRows) -> np.ndarray:
    """Q3_K weights . Q8_K activations, as ggml_vec_dot_q3_K_q8_K_generic: float32 [n, rows].

    block_q3_K, 110 bytes, 256 weights in 16 sub-blocks of 16:
        uint8_t   hmask[32];   // high bits: weight e has bit e/32 of hmask[e % 32]
        uint8_t   qs[64];      // low 2 bits, laid out like Q2_K's qs
        uint8_t   scales[12];  // 16 6-bit scales, biased by 32 (see _q3_scales)
        ggml_half d;           // super-block scale
    a[e] = low2 - (high bit ? 0 : 4)
    Per block:  aux32[l] = sum_{e = l mod 8} (scale[e/16] - 32) * q8[e] * a[e]
                sums[l] += (d * d_a) * aux32[l]
    At the end: sumf = sums[0] + sums[1] + ... + sums[7]
    """
    def per_rows(part, n):
        r, nb = part.shape[:2]
        flat = part.reshape(-1, 110)
        high = _planes(flat[:, 0:32], 1, 32).astype(I32)
        a = (_planes(flat[:, 32:96], 2, 32).astype(I32) - np.where(high == 1, 0, 4))   # [r*nb, 256]
        w = (a.reshape(-1, 16, 16) * _q3_scales(flat[:, 96:108])[:, :, None]).reshape(r, nb, 256)
        aux32 = _lane_sums(w, act.q)                                          # [n, r, nb, 8]
        d = f16(flat, 108).reshape(r, nb)
        sums = np.zeros((n, r, 8), F32)
        for b in range(nb):
            sums = _lanes_into_sums(d[:, b], aux32[:, :, b], act, b, sums)
        return _sum_lanes(np.zeros((n, r), F32), sums)
    return _kquant(raw, rows, cols, act, 110, per_rows)


def _q45_k(part, n, act, decode_a):
    """Q4_K and Q5_K after their quants: the lanes with the 8 scales, and the mins with bsums.

    Per block:  sumi = sum_{j<16} bsums[j] * mins[j/2]
                aux32[l] = sum_{e = l mod 8} scales[e/32] * q8[e] * a[e]
                sums[l] += (d * d_a) * aux32[l];   sumf -= (dmin * d_a) * sumi
    At the end: sumf += sums[0]; ...; sumf += sums[7]
    """
    r, nb = part.shape[:2]
    flat = part.reshape(-1, part.shape[2])
    sc, m = _scale_min_k4(flat[:, 4:16])                                      # [r*nb, 8] each
    a = decode_a(flat)                                                        # [r*nb, 256]
    w = (a.reshape(-1, 8, 32) * sc.astype(I32)[:, :, None]).reshape(r, nb, 256)
    aux32 = _lane_sums(w, act.q)                                              # [n, r, nb, 8]
    sumi = np.einsum("rbj,nbj->nrb", np.repeat(m.astype(I32), 2, axis=1).reshape(r, nb, 16),
                     act.bsums.reshape(n, nb, 16).astype(I32))                # [n, r, nb]
    d, dmin = f16(flat, 0).reshape(r, nb), f16(flat, 2).reshape(r, nb)
    sums = np.zeros((n, r, 8), F32)
    sumf = np.zeros((n, r), F32)
    for b in range(nb):
        sums = _lanes_into_sums(d[:, b], aux32[:, :, b], act, b, sums)
        dmin_b = dmin[:, b][None, :] * act.d[:, b:b + 1]
        sumf = sumf - dmin_b * sumi[:, :, b].astype(F32)
    return _sum_lanes(sumf, sums)


def q4_k(raw, rows: int, cols: int, act: QuantizedRows) -> np.ndarray:
    """Q4_K weights . Q8_K activations, as ggml_vec_dot_q4_K_q8_K_generic: float32 [n, rows].

    block_q4_K, 144 bytes, 256 weights in 8 sub-blocks of 32:
        ggml_half d;           // super-block scale of the scales
        ggml_half dmin;        // super-block scale of the mins
        uint8_t   scales[12];  // 8 scales and 8 mins, 6 bits each (kquants._scale_min_k4)
        uint8_t   qs[128];     // nibbles: byte 32c + l holds weights 64c + l (low), 64c + 32 + l (high)
    a[e] = nibble;  then as _q45_k
    """
    def per_rows(part, n):
        return _q45_k(part, n, act, lambda flat: _planes(flat[:, 16:144], 4, 32).astype(I32))
    return _kquant(raw, rows, cols, act, 144, per_rows)


def q5_k(raw, rows: int, cols: int, act: QuantizedRows) -> np.ndarray:
    """Q5_K weights . Q8_K activations, as ggml_vec_dot_q5_K_q8_K_generic: float32 [n, rows].

    block_q5_K, 176 bytes, 256 weights in 8 sub-blocks of 32:
        ggml_half d;           // super-block scale of the scales
        ggml_half dmin;        // super-block scale of the mins
        uint8_t   scales[12];  // 8 scales and 8 mins, 6 bits each, as in Q4_K
        uint8_t   qh[32];      // 5th bits: weight e has bit e/32 of qh[e % 32]
        uint8_t   qs[128];     // low 4 bits, laid out like Q4_K's qs
    a[e] = nibble + (5th bit ? 16 : 0);  then as _q45_k
    """
    def decode_a(flat):
        high = _planes(flat[:, 16:48], 1, 32).astype(I32)
        return _planes(flat[:, 48:176], 4, 32).astype(I32) | (high << 4)

    def per_rows(part, n):
        return _q45_k(part, n, act, decode_a)
    return _kquant(raw, rows, cols, act, 176, per_rows)


def q6_k(raw, rows: int, cols: int, act: QuantizedRows) -> np.ndarray:
    """Q6_K weights . Q8_K activations, as ggml_vec_dot_q6_K_q8_K_generic: float32 [n, rows].

    block_q6_K, 210 bytes, 256 weights in 16 sub-blocks of 16:
        uint8_t   ql[128];     // low 4 bits: byte 64h + l holds weights 128h + l (low nibble)
                               // and 128h + 64 + l (high nibble), l = 0..63
        uint8_t   qh[64];      // high 2 bits: weight 128h + 32s + l is bits 2s.. of qh[32h + l]
        int8_t    scales[16];  // scale of each sub-block
        ggml_half d;           // super-block scale
    a[e] = (low4 | high2 << 4) - 32
    Per block:  aux32[l] = sum_{e = l mod 8} scales[e/16] * q8[e] * a[e]
                sums[l] += (d * d_a) * aux32[l]
    At the end: sumf = sums[0] + ... + sums[7]     (the generic C does not use bsums here)
    """
    def per_rows(part, n):
        r, nb = part.shape[:2]
        flat = part.reshape(-1, 210)
        low = _planes(flat[:, 0:128], 4, 64).astype(I32)
        high = _planes(flat[:, 128:192], 2, 32).astype(I32)
        a = (low | (high << 4)) - 32                                          # [r*nb, 256]
        sc = flat[:, 192:208].view(np.int8).astype(I32)                       # [r*nb, 16]
        w = (a.reshape(-1, 16, 16) * sc[:, :, None]).reshape(r, nb, 256)
        aux32 = _lane_sums(w, act.q)
        d = f16(flat, 208).reshape(r, nb)
        sums = np.zeros((n, r, 8), F32)
        for b in range(nb):
            sums = _lanes_into_sums(d[:, b], aux32[:, :, b], act, b, sums)
        return _sum_lanes(np.zeros((n, r), F32), sums)
    return _kquant(raw, rows, cols, act, 210, per_rows)
