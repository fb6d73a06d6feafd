// IQ formats (layouts in reference/iquants.py). A group of 8 (or 4) weights is one row of a
// grid: iq2xxs_grid ... iq1s_grid are 64- or 32-bit integers whose byte k is weight k of the
// group (tables.py). Signs come from ksigns_iq2xs (7 stored bits) or whole sign bytes.
// y = scale * grid * sign, multiplied left to right like ggml.

#define IQ1S_DELTA 0.125f   // iq_grids.IQ1S_DELTA: IQ1_S and IQ1_M

// byte k of a grid row: unsigned (IQ2, IQ3) or signed (IQ1: -1, 0, +1)
__device__ __forceinline__ float iq_byte(u64 row, int k) { return (float)((row >> (8 * k)) & 0xFFu); }
__device__ __forceinline__ float iq_sbyte(u64 row, int k) { return (float)(signed char)(row >> (8 * k)); }

// bit k of a sign byte set: weight k of the group is negative
__device__ __forceinline__ float iq_sign(u32 signs, int k) { return ((signs >> k) & 1u) ? -1.f : 1.f; }

// nibble s of a byte array, two per byte, low nibble first (4-bit scales; IQ1_M's qh)
__device__ __forceinline__ u32 iq_nibble(const u8* p, int s) { return (p[s / 2] >> (4 * (s % 2))) & 0xFu; }

// block_iq2_xxs: ggml_half d; u16 qs[32]: per 32 weights, 4 grid-row bytes then a LE u32 aux
// (four 7-bit sign indices; scale ls in bits 28-31).   y = d*(0.5+ls)*0.25 * grid * sign
__device__ __forceinline__ float iq2_xxs(const u8* b, int j) {
    const u8* g = b + 2 + 8 * (j / 32);
    u32 aux = ld_u32(g + 4);
    int l = (j % 32) / 8;
    float db = ld_f16(b) * (0.5f + (float)(aux >> 28)) * 0.25f;
    u32 signs = ksigns_iq2xs[(aux >> (7 * l)) & 127u];
    return db * iq_byte(iq2xxs_grid[g[l]], j % 8) * iq_sign(signs, j % 8);
}

// block_iq2_xs: ggml_half d; u16 qs[32] (row bits 0-8, sign index bits 9-15); u8 scales[8].
// y = d*(0.5+ls)*0.25 * grid * sign, ls per 16 weights
__device__ __forceinline__ float iq2_xs(const u8* b, int j) {
    u32 q = ld_u16(b + 2 + 2 * (j / 8));
    float db = ld_f16(b) * (0.5f + (float)iq_nibble(b + 66, j / 16)) * 0.25f;
    return db * iq_byte(iq2xs_grid[q & 511u], j % 8) * iq_sign(ksigns_iq2xs[q >> 9], j % 8);
}

// block_iq2_s: ggml_half d; u8 qs[64] (32 row low bytes, then 32 sign bytes); u8 qh[8] (row
// bits 8-9, 2 per group); u8 scales[8].   y = d*(0.5+ls)*0.25 * grid * sign
__device__ __forceinline__ float iq2_s(const u8* b, int j) {
    int g = j / 8;
    u32 row = b[2 + g] | ((((u32)b[66 + g / 4] >> (2 * (g % 4))) & 3u) << 8);
    float db = ld_f16(b) * (0.5f + (float)iq_nibble(b + 74, j / 16)) * 0.25f;
    return db * iq_byte(iq2s_grid[row], j % 8) * iq_sign(b[34 + g], j % 8);
}

// block_iq3_xxs: ggml_half d; u8 qs[96]: 64 row bytes (one per 4 weights), then per 32 weights
// a LE u32 (four 7-bit sign indices; ls in bits 28-31).   y = d*(0.5+ls)*0.5 * grid * sign
__device__ __forceinline__ float iq3_xxs(const u8* b, int j) {
    u32 aux = ld_u32(b + 66 + 4 * (j / 32));
    int l = (j % 32) / 8;
    float db = ld_f16(b) * (0.5f + (float)(aux >> 28)) * 0.5f;
    u32 signs = ksigns_iq2xs[(aux >> (7 * l)) & 127u];
    return db * iq_byte(iq3xxs_grid[b[2 + j / 4]], j % 4) * iq_sign(signs, j % 8);
}

// block_iq3_s: ggml_half d; u8 qs[64] (row low bytes); u8 qh[8] (row bit 8: bit k%8 of qh[k/8]);
// u8 signs[32]; u8 scales[4].   y = d*(1+2*sc) * grid * sign, sc per 32 weights
__device__ __forceinline__ float iq3_s(const u8* b, int j) {
    int k = j / 4;
    u32 row = b[2 + k] | ((((u32)b[66 + k / 8] >> (k % 8)) & 1u) << 8);
    float db = ld_f16(b) * (float)(1 + 2 * (int)iq_nibble(b + 106, j / 32));
    return db * iq_byte(iq3s_grid[row], j % 4) * iq_sign(b[74 + j / 8], j % 8);
}

// block_iq1_s: ggml_half d; u8 qs[32] (row low bytes); u16 qh[8]: per 32 weights, row bits 8-10
// of its 4 groups (bits 0-11), ls (bits 12-14), delta's sign (bit 15).
// y = d*(2*ls+1) * (grid + delta)
__device__ __forceinline__ float iq1_s(const u8* b, int j) {
    int g = j / 8;
    u32 qh = ld_u16(b + 34 + 2 * (j / 32));
    float dl = ld_f16(b) * (float)(2 * (int)((qh >> 12) & 7u) + 1);
    float delta = (qh & 0x8000u) ? -IQ1S_DELTA : IQ1S_DELTA;
    u32 row = b[2 + g] | (((qh >> (3 * (g % 4))) & 7u) << 8);
    return dl * (iq_sbyte(iq1s_grid[row], j % 8) + delta);
}

// block_iq1_m: u8 qs[32] (row low bytes); u8 qh[16] (a nibble per group: row bits 8-10, delta's
// sign); u8 scales[8] = 4 LE u16: 3-bit ls per 16 weights in bits 0-11, fp16 d in the top nibbles.
// y = d*(2*ls+1) * (grid + delta)
__device__ __forceinline__ float iq1_m(const u8* b, int j) {
    const u8* sc = b + 48;
    u32 d_bits = (ld_u16(sc) >> 12) | ((ld_u16(sc + 2) >> 8) & 0x00F0u)
               | ((ld_u16(sc + 4) >> 4) & 0x0F00u) | (ld_u16(sc + 6) & 0xF000u);
    int s = j / 16, g = j / 8;
    u32 ls = (ld_u16(sc + 2 * (s / 4)) >> (3 * (s % 4))) & 7u;
    float dl = f16_to_f32(d_bits) * (float)(2 * (int)ls + 1);
    u32 nib = iq_nibble(b + 32, g);
    float delta = (nib & 8u) ? -IQ1S_DELTA : IQ1S_DELTA;
    u32 row = b[g] | ((nib & 7u) << 8);
    return dl * (iq_sbyte(iq1s_grid[row], j % 8) + delta);
}

// block_iq4_nl: ggml_half d; u8 qs[16], nibbles (nibble() is legacy.cu's).   y = d * kvalues_iq4nl[q]
__device__ __forceinline__ float iq4_nl(const u8* b, int j) {
    return ld_f16(b) * (float)kvalues_iq4nl[nibble(b + 2, j)];
}

// block_iq4_xs: ggml_half d; u16 scales_h (2 bits per scale); u8 scales_l[4] (4 bits per scale);
// u8 qs[128], 16 bytes per 32 weights like IQ4_NL.   y = d*(ls-32) * kvalues_iq4nl[q]
__device__ __forceinline__ float iq4_xs(const u8* b, int j) {
    int ib = j / 32;
    int ls = (int)(iq_nibble(b + 4, ib) | (((ld_u16(b + 2) >> (2 * ib)) & 3u) << 4));
    float dl = ld_f16(b) * (float)(ls - 32);
    return dl * (float)kvalues_iq4nl[nibble(b + 8 + 16 * ib, j % 32)];
}

DEQUANT_KERNEL(iq2_xxs, 256, 66)
DEQUANT_KERNEL(iq2_xs, 256, 74)
DEQUANT_KERNEL(iq2_s, 256, 82)
DEQUANT_KERNEL(iq3_xxs, 256, 98)
DEQUANT_KERNEL(iq3_s, 256, 110)
DEQUANT_KERNEL(iq1_s, 256, 50)
DEQUANT_KERNEL(iq1_m, 256, 56)
DEQUANT_KERNEL(iq4_nl, 32, 18)
DEQUANT_KERNEL(iq4_xs, 256, 136)
