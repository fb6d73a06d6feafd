// Shared by every CUDA decoder. Compiled by NVRTC (through CuPy) with --fmad=false, so that
// `q * d + m` rounds twice like ggml's C code instead of being fused into one FMA.
//
// Each type `t` has a device function `float t(const unsigned char* block, int j)` giving
// element j of one block, and a kernel `dequant_t` made by DEQUANT_KERNEL: one thread per
// output element. Consecutive threads read the same block (one broadcast load per warp) and
// write consecutive floats (coalesced stores).

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ u32 ld_u16(const u8* p) { return (u32)p[0] | ((u32)p[1] << 8); }

__device__ __forceinline__ u32 ld_u32(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

// IEEE half bits -> float, exactly (subnormals as mant * 2^-24; inf and NaN payload kept).
__device__ __forceinline__ float f16_to_f32(u32 h) {
    u32 sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
    if (exp == 0) {
        float v = (float)mant * 5.9604644775390625e-08f;   // 2^-24
        return sign ? -v : v;
    }
    if (exp == 31) return __uint_as_float(sign | 0x7F800000u | (mant << 13));
    return __uint_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

__device__ __forceinline__ float ld_f16(const u8* p) { return f16_to_f32(ld_u16(p)); }

#define DEQUANT_KERNEL(name, QK, BYTES)                                                     \
    extern "C" __global__ void dequant_##name(const u8* src, float* dst, long long n) {     \
        long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;                     \
        if (e < n) dst[e] = name(src + (e / (QK)) * (long long)(BYTES), (int)(e % (QK)));   \
    }
