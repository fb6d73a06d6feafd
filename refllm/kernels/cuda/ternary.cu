// Ternary formats (layouts in reference/ternary.py).

// Base-3 digit n of a packed byte: ((uint8)(byte * 3^n) * 3) >> 8, as -1, 0 or +1.
__device__ __forceinline__ int trit(u32 byte, int n) {
    const u32 pow3[5] = {1, 3, 9, 27, 81};
    return (int)((((byte * pow3[n]) & 0xFFu) * 3u) >> 8) - 1;
}

// block_tq1_0: u8 qs[48] (5 trits/byte); u8 qh[4] (4 trits/byte); ggml_half d (last).
// Weights 0..159: digit j/32 of qs[j%32]; 160..239: digit (j-160)/16 of qs[32 + j%16];
// 240..255: digit (j-240)/4 of qh[j%4].   y = t * d
__device__ __forceinline__ float tq1_0(const u8* b, int j) {
    int t;
    if (j < 160)      t = trit(b[j % 32], j / 32);
    else if (j < 240) t = trit(b[32 + (j - 160) % 16], (j - 160) / 16);
    else              t = trit(b[48 + (j - 240) % 4], (j - 240) / 4);
    return (float)t * ld_f16(b + 52);
}

// block_tq2_0: u8 qs[64] (weight 128h + 32s + m = bits 2s.. of qs[32h + m]); ggml_half d.
// y = (q - 1) * d
__device__ __forceinline__ float tq2_0(const u8* b, int j) {
    int h = j / 128, s = (j % 128) / 32, m = j % 32;
    int q = (b[32 * h + m] >> (2 * s)) & 3;
    return (float)(q - 1) * ld_f16(b + 64);
}

DEQUANT_KERNEL(tq1_0, 256, 54)
DEQUANT_KERNEL(tq2_0, 256, 66)
