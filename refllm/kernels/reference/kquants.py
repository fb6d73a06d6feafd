"""K-quants: super-blocks of 256 weights in sub-blocks of 16 or 32, each sub-block with its own
small integer scale (and maybe min), which one or two fp16 super-block scales turn into floats.

The quants of a super-block are packed in bit-planes over runs of 32 (or 64) bytes: a run holds
first the lowest bits of every byte, then the next bits, ... (see `_planes`). The float32
arithmetic is ggml's: the sub-block's scale is made first (`d * sc`), then applied to q.
"""

from __future__ import annotations

import numpy as np

from refllm.kernels.reference.fields import f16, f32, nibbles


def _planes(data: np.ndarray, width: int, run: int) -> np.ndarray:
    """(n, k) bytes -> (n, k*8/width) fields of `width` bits, one bit-plane of a run at a time.

    The bytes are taken in runs of `run`; a run gives the lowest `width` bits of all its bytes,
    then the next `width` bits of all of them, ...: field p of byte r*run + l lands at
    (r * 8/width + p) * run + l. E.g. Q4_K's qs (width 4, run 32): byte 32c + l holds weights
    64c + l (low nibble) and 64c + 32 + l (high nibble).
    """
    shifts = np.arange(0, 8, width, dtype=np.uint8)[:, None]        # (8/width, 1)
    runs = data.reshape(data.shape[0], -1, 1, run)                  # (n, runs, 1, run)
    fields = (runs >> shifts) & np.uint8((1 << width) - 1)          # (n, runs, 8/width, run)
    return fields.reshape(data.shape[0], -1)


def _by_sub_block(values: np.ndarray, per_block: int) -> np.ndarray:
    """(n, 256) -> (n, 256/per_block, per_block): one row per sub-block, to meet its scale."""
    return values.reshape(values.shape[0], -1, per_block)


def q2_k(blocks):
    """block_q2_K, 84 bytes, 256 weights in 16 sub-blocks of 16:
        uint8_t   scales[16];  // sub-block k: low nibble = scale, high nibble = min
        uint8_t   qs[64];      // 2 bits per weight: weight 128h + 32s + l is bits 2s..2s+1
                               // of qs[32h + l]
        ggml_half d;           // super-block scale of the scales
        ggml_half dmin;        // super-block scale of the mins
    y = (d * (sc & 15)) * q - dmin * (sc >> 4)          sc = scales[e / 16]
    """
    scales = blocks[:, 0:16]                                          # (n, 16)
    q = _planes(blocks[:, 16:80], 2, 32).astype(np.float32)           # (n, 256)
    d, dmin = f16(blocks, 80), f16(blocks, 82)                        # (n, 1) each
    dl = d * (scales & 0x0F).astype(np.float32)                       # (n, 16)
    ml = dmin * (scales >> 4).astype(np.float32)                      # (n, 16)
    y = dl[:, :, None] * _by_sub_block(q, 16) - ml[:, :, None]        # (n, 16, 16)
    return y.reshape(-1, 256)


def q3_k(blocks):
    """block_q3_K, 110 bytes, 256 weights in 16 sub-blocks of 16:
        uint8_t   hmask[32];   // high bits: weight e has bit e/32 of hmask[e % 32]
        uint8_t   qs[64];      // low 2 bits, laid out like Q2_K's qs
        uint8_t   scales[12];  // 16 6-bit scales, biased by 32: the low 4 bits of scale k are
                               // nibble k of scales[0..7] (low nibbles, then high nibbles),
                               // the top 2 bits are bits 2(k/4).. of scales[8 + k % 4]
        ggml_half d;           // super-block scale
    q = low2 - (high bit ? 0 : 4)                       (-4..3)
    y = (d * (sc - 32)) * q                              sc = scale e / 16
    """
    high = _planes(blocks[:, 0:32], 1, 32)                            # (n, 256) 0/1
    low = _planes(blocks[:, 32:96], 2, 32)                            # (n, 256) 0..3
    scales = blocks[:, 96:108]                                        # (n, 12)
    d = f16(blocks, 108)                                              # (n, 1)
    sc = nibbles(scales[:, 0:8]) | (_planes(scales[:, 8:12], 2, 4) << 4)   # (n, 16) 0..63
    dl = d * (sc.astype(np.int8) - 32).astype(np.float32)             # (n, 16)
    q = (low.astype(np.int8) - np.where(high == 1, 0, 4)).astype(np.float32)     # (n, 256)
    return (dl[:, :, None] * _by_sub_block(q, 16)).reshape(-1, 256)


def _scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes of 6-bit scales and mins -> (sc, m), each (n, 8) (get_scale_min_k4).

        bytes 0..3:   the top 2 bits of sc[4..7], then sc[0..3]    (2 + 6 bits)
        bytes 4..7:   the top 2 bits of m[4..7],  then m[0..3]
        bytes 8..11:  m[4..7] low 4 bits (high nibble), sc[4..7] low 4 bits (low nibble)
    """
    a, b, c = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]         # (n, 4) each
    sc = np.concatenate([a & 0x3F, (c & 0x0F) | ((a >> 6) << 4)], axis=1)
    m = np.concatenate([b & 0x3F, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return sc, m


def q4_k(blocks):
    """block_q4_K, 144 bytes, 256 weights in 8 sub-blocks of 32:
        ggml_half d;           // super-block scale of the scales
        ggml_half dmin;        // super-block scale of the mins
        uint8_t   scales[12];  // 8 scales and 8 mins, 6 bits each (see _scale_min_k4)
        uint8_t   qs[128];     // nibbles: byte 32c + l holds weights 64c + l (low) and
                               // 64c + 32 + l (high)
    y = (d * sc) * q - (dmin * m)                       sc, m of sub-block e / 32
    """
    d, dmin = f16(blocks, 0), f16(blocks, 2)                          # (n, 1) each
    sc, m = _scale_min_k4(blocks[:, 4:16])                            # (n, 8) each
    q = _planes(blocks[:, 16:144], 4, 32).astype(np.float32)          # (n, 256)
    dl = d * sc.astype(np.float32)                                    # (n, 8)
    ml = dmin * m.astype(np.float32)                                  # (n, 8)
    y = dl[:, :, None] * _by_sub_block(q, 32) - ml[:, :, None]        # (n, 8, 32)
    return y.reshape(-1, 256)


def q5_k(blocks):
    """block_q5_K, 176 bytes, 256 weights in 8 sub-blocks of 32:
        ggml_half d;           // super-block scale of the scales
        ggml_half dmin;        // super-block scale of the mins
        uint8_t   scales[12];  // 8 scales and 8 mins, 6 bits each, as in Q4_K
        uint8_t   qh[32];      // 5th bits: weight e has bit e/32 of qh[e % 32]
        uint8_t   qs[128];     // low 4 bits, laid out like Q4_K's qs
    y = (d * sc) * q - (dmin * m)
    """
    d, dmin = f16(blocks, 0), f16(blocks, 2)                          # (n, 1) each
    sc, m = _scale_min_k4(blocks[:, 4:16])                            # (n, 8) each
    high = _planes(blocks[:, 16:48], 1, 32)                           # (n, 256) 0/1
    low = _planes(blocks[:, 48:176], 4, 32)                           # (n, 256) 0..15
    q = (low | (high << 4)).astype(np.float32)
    dl = d * sc.astype(np.float32)                                    # (n, 8)
    ml = dmin * m.astype(np.float32)                                  # (n, 8)
    y = dl[:, :, None] * _by_sub_block(q, 32) - ml[:, :, None]        # (n, 8, 32)
    return y.reshape(-1, 256)


def q6_k(blocks):
    """block_q6_K, 210 bytes, 256 weights in 16 sub-blocks of 16:
        uint8_t   ql[128];     // low 4 bits: byte 64h + l holds weights 128h + l (low nibble)
                               // and 128h + 64 + l (high nibble), l = 0..63
        uint8_t   qh[64];      // high 2 bits: weight 128h + 32s + l is bits 2s.. of qh[32h + l]
        int8_t    scales[16];  // scale of each sub-block
        ggml_half d;           // super-block scale
    y = (d * sc) * (q - 32)                              sc = scales[e / 16]
    """
    low = _planes(blocks[:, 0:128], 4, 64)                            # (n, 256) 0..15
    high = _planes(blocks[:, 128:192], 2, 32)                         # (n, 256) 0..3
    sc = blocks[:, 192:208].view(np.int8)                             # (n, 16)
    d = f16(blocks, 208)                                              # (n, 1)
    q = ((low | (high << 4)).astype(np.int8) - 32).astype(np.float32)
    dl = d * sc.astype(np.float32)                                    # (n, 16)
    return (dl[:, :, None] * _by_sub_block(q, 16)).reshape(-1, 256)


def q8_k(blocks):
    """block_q8_K, 292 bytes, 256 weights (an activation type: ggml quantizes matmul inputs to it):
        float     d;           // scale (a float32, not fp16)
        int8_t    qs[256];     // quants
        int16_t   bsums[16];   // sums of qs in groups of 16, used by dot products; not needed
    y = d * q
    """
    d = f32(blocks, 0)                                                # (n, 1)
    return d * blocks[:, 4:260].view(np.int8).astype(np.float32)
