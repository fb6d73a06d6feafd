// K-quants (layouts in reference/kquants.py): super-blocks of 256 weights, sub-blocks of 16 or
// 32 with small integer scales. Each element makes its sub-block's float scale as ggml does,
// (d * sc), then applies it: the same float32 operations in the same order.

// block_q2_K: u8 scales[16] (lo nibble scale, hi nibble min); u8 qs[64] (weight
// 128h + 32s + l = bits 2s.. of qs[32h + l]); ggml_half d, dmin.
// y = (d * (sc & 15)) * q - dmin * (sc >> 4),   sc = scales[j / 16]
__device__ __forceinline__ float q2_k(const u8* b, int j) {
    int h = j / 128, s = (j % 128) / 32, l = j % 32;
    int q = (b[16 + 32 * h + l] >> (2 * s)) & 3;
    u32 sc = b[j / 16];
    return (ld_f16(b + 80) * (float)(sc & 15u)) * (float)q - ld_f16(b + 82) * (float)(sc >> 4);
}

// Q3_K's 6-bit scale k (0..15), unbiased: nibble k of scales[0..7] (low nibbles, then high),
// top 2 bits = bits 2(k/4).. of scales[8 + k%4].
__device__ __forceinline__ int q3_scale(const u8* scales, int k) {
    int low = k < 8 ? (scales[k] & 0x0F) : (scales[k - 8] >> 4);
    int high = (scales[8 + k % 4] >> (2 * (k / 4))) & 3;
    return (low | (high << 4)) - 32;
}

// block_q3_K: u8 hmask[32] (weight j: bit j/32 of hmask[j%32]); u8 qs[64] (low 2 bits, like
// Q2_K); u8 scales[12] (16 x 6 bits, biased by 32); ggml_half d.
// q = low - (high bit ? 0 : 4);   y = (d * sc) * q
__device__ __forceinline__ float q3_k(const u8* b, int j) {
    int h = j / 128, s = (j % 128) / 32, l = j % 32;
    int low = (b[32 + 32 * h + l] >> (2 * s)) & 3;
    int high = (b[l] >> (j / 32)) & 1;
    return (ld_f16(b + 108) * (float)q3_scale(b + 96, j / 16)) * (float)(low - (high ? 0 : 4));
}

// Q4_K/Q5_K's 6-bit scale and min of sub-block k (0..7) from 12 bytes (get_scale_min_k4).
__device__ __forceinline__ void scale_min_k4(const u8* s, int k, int* sc, int* m) {
    if (k < 4) {
        *sc = s[k] & 63;
        *m = s[k + 4] & 63;
    } else {
        *sc = (s[k + 4] & 0x0F) | ((s[k - 4] >> 6) << 4);
        *m = (s[k + 4] >> 4) | ((s[k] >> 6) << 4);
    }
}

// block_q4_K: ggml_half d, dmin; u8 scales[12]; u8 qs[128] (byte 32c + l: weights 64c + l
// low nibble, 64c + 32 + l high nibble).   y = (d * sc) * q - (dmin * m),   sub-block j / 32
__device__ __forceinline__ float q4_k(const u8* b, int j) {
    int sc, m;
    scale_min_k4(b + 4, j / 32, &sc, &m);
    int byte = b[16 + 32 * (j / 64) + j % 32];
    int q = (j % 64) < 32 ? (byte & 0x0F) : (byte >> 4);
    return (ld_f16(b) * (float)sc) * (float)q - ld_f16(b + 2) * (float)m;
}

// block_q5_K: ggml_half d, dmin; u8 scales[12]; u8 qh[32] (5th bit of weight j: bit j/32 of
// qh[j%32]); u8 qs[128] (low 4 bits, like Q4_K).   y = (d * sc) * q - (dmin * m)
__device__ __forceinline__ float q5_k(const u8* b, int j) {
    int sc, m;
    scale_min_k4(b + 4, j / 32, &sc, &m);
    int byte = b[48 + 32 * (j / 64) + j % 32];
    int high = (b[16 + j % 32] >> (j / 32)) & 1;
    int q = ((j % 64) < 32 ? (byte & 0x0F) : (byte >> 4)) | (high << 4);
    return (ld_f16(b) * (float)sc) * (float)q - ld_f16(b + 2) * (float)m;
}

// block_q6_K: u8 ql[128] (byte 64h + l: weights 128h + l low nibble, 128h + 64 + l high);
// u8 qh[64] (weight 128h + 32s + l: bits 2s.. of qh[32h + l]); int8 scales[16]; ggml_half d.
// y = (d * sc) * (q - 32),   sc = scales[j / 16]
__device__ __forceinline__ float q6_k(const u8* b, int j) {
    int h = j / 128, r = j % 128;
    int byte = b[64 * h + r % 64];
    int low = r < 64 ? (byte & 0x0F) : (byte >> 4);
    int high = (b[128 + 32 * h + r % 32] >> (2 * (r / 32))) & 3;
    float sc = (float)(signed char)b[192 + j / 16];
    return (ld_f16(b + 208) * sc) * (float)((low | (high << 4)) - 32);
}

// block_q8_K: float d; int8 qs[256]; int16 bsums[16] (not needed to decode).   y = d * q
__device__ __forceinline__ float q8_k(const u8* b, int j) {
    return __uint_as_float(ld_u32(b)) * (float)(signed char)b[4 + j];
}

DEQUANT_KERNEL(q2_k, 256, 84)
DEQUANT_KERNEL(q3_k, 256, 110)
DEQUANT_KERNEL(q4_k, 256, 144)
DEQUANT_KERNEL(q5_k, 256, 176)
DEQUANT_KERNEL(q6_k, 256, 210)
DEQUANT_KERNEL(q8_k, 256, 292)
