// Plain types (one element per block; see reference/plain.py).

__device__ __forceinline__ float f32(const u8* b, int j) { return __uint_as_float(ld_u32(b)); }
__device__ __forceinline__ float f16(const u8* b, int j) { return ld_f16(b); }
__device__ __forceinline__ float bf16(const u8* b, int j) { return __uint_as_float(ld_u16(b) << 16); }
__device__ __forceinline__ float f64(const u8* b, int j) {
    return (float)__longlong_as_double((long long)((u64)ld_u32(b) | ((u64)ld_u32(b + 4) << 32)));
}
__device__ __forceinline__ float i8(const u8* b, int j) { return (float)(signed char)b[0]; }
__device__ __forceinline__ float i16(const u8* b, int j) { return (float)(short)ld_u16(b); }
__device__ __forceinline__ float i32(const u8* b, int j) { return (float)(int)ld_u32(b); }
__device__ __forceinline__ float i64(const u8* b, int j) {
    return (float)(long long)((u64)ld_u32(b) | ((u64)ld_u32(b + 4) << 32));
}

DEQUANT_KERNEL(f32, 1, 4)
DEQUANT_KERNEL(f16, 1, 2)
DEQUANT_KERNEL(bf16, 1, 2)
DEQUANT_KERNEL(f64, 1, 8)
DEQUANT_KERNEL(i8, 1, 1)
DEQUANT_KERNEL(i16, 1, 2)
DEQUANT_KERNEL(i32, 1, 4)
DEQUANT_KERNEL(i64, 1, 8)
