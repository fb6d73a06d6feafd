// Legacy block formats (layouts in reference/legacy.py). Weights j and j+16 of a 32-weight
// block share byte j of qs: low nibble, high nibble.

__device__ __forceinline__ int nibble(const u8* qs, int j) {   // j in 0..31
    return j < 16 ? (qs[j] & 0x0F) : (qs[j - 16] >> 4);
}

// block_q4_0: ggml_half d; u8 qs[16].   y = (q - 8) * d
__device__ __forceinline__ float q4_0(const u8* b, int j) {
    return (float)(nibble(b + 2, j) - 8) * ld_f16(b);
}

// block_q4_1: ggml_half d, m; u8 qs[16].   y = q * d + m
__device__ __forceinline__ float q4_1(const u8* b, int j) {
    return (float)nibble(b + 4, j) * ld_f16(b) + ld_f16(b + 2);
}

// block_q5_0: ggml_half d; u8 qh[4] (LE u32, bit j = 5th bit of weight j); u8 qs[16].
// y = (q - 16) * d
__device__ __forceinline__ float q5_0(const u8* b, int j) {
    int q = nibble(b + 6, j) | (int)(((ld_u32(b + 2) >> j) & 1u) << 4);
    return (float)(q - 16) * ld_f16(b);
}

// block_q5_1: ggml_half d, m; u8 qh[4]; u8 qs[16].   y = q * d + m
__device__ __forceinline__ float q5_1(const u8* b, int j) {
    int q = nibble(b + 8, j) | (int)(((ld_u32(b + 4) >> j) & 1u) << 4);
    return (float)q * ld_f16(b) + ld_f16(b + 2);
}

// block_q8_0: ggml_half d; int8 qs[32].   y = q * d
__device__ __forceinline__ float q8_0(const u8* b, int j) {
    return (float)(signed char)b[2 + j] * ld_f16(b);
}

// block_q8_1: ggml_half d, s; int8 qs[32].   y = q * d
__device__ __forceinline__ float q8_1(const u8* b, int j) {
    return (float)(signed char)b[4 + j] * ld_f16(b);
}

// block_q1_0: ggml_half d; u8 qs[16], 1 bit per weight.   y = bit ? d : -d
__device__ __forceinline__ float q1_0(const u8* b, int j) {
    float d = ld_f16(b);
    return ((b[2 + j / 8] >> (j % 8)) & 1) ? d : -d;
}

// block_q2_0: ggml_half d; u8 qs[16], 2 bits per weight.   y = (q - 1) * d
__device__ __forceinline__ float q2_0(const u8* b, int j) {
    int q = (b[2 + j / 4] >> (2 * (j % 4))) & 3;
    return (float)(q - 1) * ld_f16(b);
}

DEQUANT_KERNEL(q4_0, 32, 18)
DEQUANT_KERNEL(q4_1, 32, 20)
DEQUANT_KERNEL(q5_0, 32, 22)
DEQUANT_KERNEL(q5_1, 32, 24)
DEQUANT_KERNEL(q8_0, 32, 34)
DEQUANT_KERNEL(q8_1, 32, 36)
DEQUANT_KERNEL(q1_0, 128, 18)
DEQUANT_KERNEL(q2_0, 64, 18)
