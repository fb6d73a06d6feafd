// Microscaling fp4 formats (layouts in reference/fp4.py). kvalues_mxfp4 comes from tables.py.

// E8M0 byte -> 2^(e-128): subnormal for e < 2, else exponent field e - 1.
__device__ __forceinline__ float e8m0_half(u32 e) {
    return __uint_as_float(e < 2 ? (0x00200000u << e) : ((e - 1) << 23));
}

// Unsigned E4M3 byte (bias 7, top bit ignored) -> value / 2; 0 and 0x7F decode to 0.
__device__ __forceinline__ float ue4m3_half(u32 x) {
    if (x == 0 || x == 0x7F) return 0.0f;
    int exp = (x >> 3) & 0x0F;
    float man = (float)(x & 0x07);
    float raw = exp == 0 ? man * 0.001953125f                           // 2^-9
                         : (1.0f + man / 8.0f) * __uint_as_float((u32)(exp - 7 + 127) << 23);
    return raw * 0.5f;
}

// block_mxfp4: u8 e; u8 qs[16] (byte j -> weights j, j+16).   y = kvalues[q] * 2^(e-128)
__device__ __forceinline__ float mxfp4(const u8* b, int j) {
    int q = j < 16 ? (b[1 + j] & 0x0F) : (b[1 + j - 16] >> 4);
    return e8m0_half(b[0]) * (float)kvalues_mxfp4[q];
}

// block_nvfp4: u8 d[4] (UE4M3 per 16 weights); u8 qs[32] (sub-block s: qs[8s..8s+7],
// byte k -> weights 16s + k, 16s + k + 8).   y = kvalues[q] * ue4m3(d[s]) / 2
__device__ __forceinline__ float nvfp4(const u8* b, int j) {
    int s = j / 16, k = j % 16;
    int q = k < 8 ? (b[4 + 8 * s + k] & 0x0F) : (b[4 + 8 * s + k - 8] >> 4);
    return ue4m3_half(b[s]) * (float)kvalues_mxfp4[q];
}

DEQUANT_KERNEL(mxfp4, 32, 17)
DEQUANT_KERNEL(nvfp4, 64, 36)
