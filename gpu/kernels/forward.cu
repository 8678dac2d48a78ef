// tl-verify: binary32 forward and directed-rounding interval forward of the IR ops a checked
// graph runs on (gpu/NATIVE_SOURCES names each op's kernel). Row-major throughout; a batch of
// B inputs is B rows. No fast-math: every operation is an IEEE 754 binary32 operation, fused
// multiply-adds written out (fmaf) and the interval kernels' products and sums in directed
// rounding (__fmul_rd/__fmul_ru, __fadd_rd/__fadd_ru), which the compiler never contracts.

#define TILE 16

// Y[r, j] = sum_i X[r, i] W[j, i] (+ b[j]): X is B x k, W is m x k (the graph's weight), Y B x m.
// The sum runs over i in tiles of TILE, each a chain of fmaf; the bias is added last.
extern "C" __global__ void linear_f32(const float* __restrict__ X, const float* __restrict__ W,
                                      const float* __restrict__ b, float* __restrict__ Y,
                                      int B, int k, int m, int has_bias)
{
    __shared__ float xs[TILE][TILE];
    __shared__ float ws[TILE][TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int r = blockIdx.x * TILE + ty;  // batch row this thread writes (grid x: rows)
    const int j = blockIdx.y * TILE + tx;  // output this thread writes (grid y: outputs)
    const int jw = blockIdx.y * TILE + ty; // weight row this thread loads
    float s = 0.0f;
    for (int t = 0; t < k; t += TILE) {
        const int i = t + tx;
        xs[ty][tx] = (r < B && i < k) ? X[(size_t)r * k + i] : 0.0f;
        ws[ty][tx] = (jw < m && i < k) ? W[(size_t)jw * k + i] : 0.0f;
        __syncthreads();
#pragma unroll
        for (int u = 0; u < TILE; ++u)
            s = fmaf(xs[ty][u], ws[tx][u], s);
        __syncthreads();
    }
    if (r < B && j < m)
        Y[(size_t)r * m + j] = has_bias ? __fadd_rn(s, b[j]) : s;
}

// The same sums over boxes [Xlo, Xhi]: W exact, each product and partial sum rounded down for
// the lower end and up for the upper one, so [Ylo, Yhi] holds W x + b for every x in the box.
extern "C" __global__ void linear_interval(const float* __restrict__ Xlo,
                                           const float* __restrict__ Xhi,
                                           const float* __restrict__ W,
                                           const float* __restrict__ b,
                                           float* __restrict__ Ylo, float* __restrict__ Yhi,
                                           int B, int k, int m, int has_bias)
{
    __shared__ float ls[TILE][TILE];
    __shared__ float hs[TILE][TILE];
    __shared__ float ws[TILE][TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int r = blockIdx.x * TILE + ty;
    const int j = blockIdx.y * TILE + tx;
    const int jw = blockIdx.y * TILE + ty;
    float lo = 0.0f, hi = 0.0f;
    for (int t = 0; t < k; t += TILE) {
        const int i = t + tx;
        const bool in = r < B && i < k;
        ls[ty][tx] = in ? Xlo[(size_t)r * k + i] : 0.0f;
        hs[ty][tx] = in ? Xhi[(size_t)r * k + i] : 0.0f;
        ws[ty][tx] = (jw < m && i < k) ? W[(size_t)jw * k + i] : 0.0f;
        __syncthreads();
#pragma unroll
        for (int u = 0; u < TILE; ++u) {
            const float w = ws[tx][u];
            const float a = w >= 0.0f ? ls[ty][u] : hs[ty][u];
            const float c = w >= 0.0f ? hs[ty][u] : ls[ty][u];
            lo = __fadd_rd(lo, __fmul_rd(w, a));
            hi = __fadd_ru(hi, __fmul_ru(w, c));
        }
        __syncthreads();
    }
    if (r < B && j < m) {
        Ylo[(size_t)r * m + j] = has_bias ? __fadd_rd(lo, b[j]) : lo;
        Yhi[(size_t)r * m + j] = has_bias ? __fadd_ru(hi, b[j]) : hi;
    }
}

// max(x, 0), NaN kept (fmaxf would turn a NaN into 0 and hide it).
__device__ __forceinline__ float relu1(float x)
{
    return x != x ? x : (x > 0.0f ? x : 0.0f);
}

extern "C" __global__ void relu_f32(const float* __restrict__ X, float* __restrict__ Y, size_t n)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        Y[i] = relu1(X[i]);
}

extern "C" __global__ void relu_interval(const float* __restrict__ Xlo,
                                         const float* __restrict__ Xhi,
                                         float* __restrict__ Ylo, float* __restrict__ Yhi,
                                         size_t n)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        Ylo[i] = relu1(Xlo[i]);
        Yhi[i] = relu1(Xhi[i]);
    }
}

extern "C" __global__ void add_f32(const float* __restrict__ A, const float* __restrict__ C,
                                   float* __restrict__ Y, size_t n)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        Y[i] = __fadd_rn(A[i], C[i]);
}

extern "C" __global__ void add_interval(const float* __restrict__ Alo,
                                        const float* __restrict__ Ahi,
                                        const float* __restrict__ Clo,
                                        const float* __restrict__ Chi,
                                        float* __restrict__ Ylo, float* __restrict__ Yhi,
                                        size_t n)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        Ylo[i] = __fadd_rd(Alo[i], Clo[i]);
        Yhi[i] = __fadd_ru(Ahi[i], Chi[i]);
    }
}

// Direct convolution, one thread per output: X is B x C x H x W, Wt is O x (C/G) x KH x KW (the
// graph's weight), Y is B x O x OH x OW; padding (zeros) symmetric, stride, dilation, groups as
// in the IR. The sum over (channel, ky, kx) is one chain of fmaf; the bias is added last.
struct ConvGeometry {
    int B, C, H, W, O, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, G, has_bias;
};

template <bool INTERVAL>
__device__ __forceinline__ void conv2d_body(const float* __restrict__ Xlo,
                                            const float* __restrict__ Xhi,
                                            const float* __restrict__ Wt,
                                            const float* __restrict__ b,
                                            float* __restrict__ Ylo, float* __restrict__ Yhi,
                                            const ConvGeometry& q)
{
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t plane = (size_t)q.OH * q.OW;
    if (idx >= (size_t)q.B * q.O * plane)
        return;
    const int ox = idx % q.OW, oy = (idx / q.OW) % q.OH;
    const int oc = (idx / plane) % q.O;
    const size_t r = idx / (plane * q.O);
    const int cg = q.C / q.G, g = oc / (q.O / q.G);
    float lo = 0.0f, hi = 0.0f;
    for (int ci = 0; ci < cg; ++ci) {
        const size_t chan = (r * q.C + g * cg + ci) * q.H;
        for (int ky = 0; ky < q.KH; ++ky) {
            const int iy = oy * q.SH - q.PH + ky * q.DH;
            if (iy < 0 || iy >= q.H)
                continue;
            for (int kx = 0; kx < q.KW; ++kx) {
                const int ix = ox * q.SW - q.PW + kx * q.DW;
                if (ix < 0 || ix >= q.W)
                    continue;
                const float w = Wt[((oc * cg + ci) * q.KH + ky) * q.KW + kx];
                const size_t at = (chan + iy) * q.W + ix;
                if (INTERVAL) {
                    lo = __fadd_rd(lo, __fmul_rd(w, w >= 0.0f ? Xlo[at] : Xhi[at]));
                    hi = __fadd_ru(hi, __fmul_ru(w, w >= 0.0f ? Xhi[at] : Xlo[at]));
                } else {
                    lo = fmaf(w, Xlo[at], lo);
                }
            }
        }
    }
    if (INTERVAL) {
        Ylo[idx] = q.has_bias ? __fadd_rd(lo, b[oc]) : lo;
        Yhi[idx] = q.has_bias ? __fadd_ru(hi, b[oc]) : hi;
    } else {
        Ylo[idx] = q.has_bias ? __fadd_rn(lo, b[oc]) : lo;
    }
}

#define CONV_ARGS int B, int C, int H, int W, int O, int OH, int OW, int KH, int KW, int SH, \
                  int SW, int PH, int PW, int DH, int DW, int G, int has_bias
#define CONV_GEOMETRY {B, C, H, W, O, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, G, has_bias}

extern "C" __global__ void conv2d_f32(const float* __restrict__ X, const float* __restrict__ Wt,
                                      const float* __restrict__ b, float* __restrict__ Y,
                                      CONV_ARGS)
{
    const ConvGeometry q = CONV_GEOMETRY;
    conv2d_body<false>(X, X, Wt, b, Y, Y, q);
}

extern "C" __global__ void conv2d_interval(const float* __restrict__ Xlo,
                                           const float* __restrict__ Xhi,
                                           const float* __restrict__ Wt,
                                           const float* __restrict__ b,
                                           float* __restrict__ Ylo, float* __restrict__ Yhi,
                                           CONV_ARGS)
{
    const ConvGeometry q = CONV_GEOMETRY;
    conv2d_body<true>(Xlo, Xhi, Wt, b, Ylo, Yhi, q);
}

// 2-D pooling, one thread per output: X is B x C x H x W, Y is B x C x OH x OW; padding
// symmetric (outside the input: skipped by max, counted or not by average), stride, dilation
// (max only). max keeps a NaN; average sums the window in order and divides once by its count
// (the kernel size, or the elements inside the input when count_include_pad is 0).
#define POOL_ARGS int B, int C, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, \
                  int PH, int PW, int DH, int DW, int include_pad
struct PoolGeometry {
    int B, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, include_pad;
};
#define POOL_GEOMETRY {B, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, include_pad}

template <bool MAX, bool INTERVAL>
__device__ __forceinline__ void pool_body(const float* __restrict__ Xlo,
                                          const float* __restrict__ Xhi,
                                          float* __restrict__ Ylo, float* __restrict__ Yhi,
                                          const PoolGeometry& q)
{
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t plane = (size_t)q.OH * q.OW;
    if (idx >= (size_t)q.B * q.C * plane)
        return;
    const int ox = idx % q.OW, oy = (idx / q.OW) % q.OH;
    const size_t chan = (idx / plane) * q.H;  // (row, channel) of the input, times H
    float lo = MAX ? -INFINITY : 0.0f, hi = lo;
    int count = 0;
    for (int ky = 0; ky < q.KH; ++ky) {
        const int iy = oy * q.SH - q.PH + ky * q.DH;
        for (int kx = 0; kx < q.KW; ++kx) {
            const int ix = ox * q.SW - q.PW + kx * q.DW;
            if (iy < 0 || iy >= q.H || ix < 0 || ix >= q.W)
                continue;
            const size_t at = (chan + iy) * q.W + ix;
            ++count;
            if (MAX) {
                const float a = Xlo[at];
                lo = (a > lo || a != a) && lo == lo ? a : lo;
                if (INTERVAL) {
                    const float c = Xhi[at];
                    hi = (c > hi || c != c) && hi == hi ? c : hi;
                }
            } else if (INTERVAL) {
                lo = __fadd_rd(lo, Xlo[at]);
                hi = __fadd_ru(hi, Xhi[at]);
            } else {
                lo = __fadd_rn(lo, Xlo[at]);
            }
        }
    }
    if (!MAX) {
        const float n = (float)(q.include_pad ? q.KH * q.KW : count);
        lo = INTERVAL ? __fdiv_rd(lo, n) : __fdiv_rn(lo, n);
        if (INTERVAL)
            hi = __fdiv_ru(hi, n);
    }
    Ylo[idx] = lo;
    if (INTERVAL)
        Yhi[idx] = hi;
}

extern "C" __global__ void maxpool2d_f32(const float* __restrict__ X, float* __restrict__ Y,
                                         POOL_ARGS)
{
    const PoolGeometry q = POOL_GEOMETRY;
    pool_body<true, false>(X, X, Y, Y, q);
}

extern "C" __global__ void maxpool2d_interval(const float* __restrict__ Xlo,
                                              const float* __restrict__ Xhi,
                                              float* __restrict__ Ylo, float* __restrict__ Yhi,
                                              POOL_ARGS)
{
    const PoolGeometry q = POOL_GEOMETRY;
    pool_body<true, true>(Xlo, Xhi, Ylo, Yhi, q);
}

extern "C" __global__ void avgpool2d_f32(const float* __restrict__ X, float* __restrict__ Y,
                                         POOL_ARGS)
{
    const PoolGeometry q = POOL_GEOMETRY;
    pool_body<false, false>(X, X, Y, Y, q);
}

extern "C" __global__ void avgpool2d_interval(const float* __restrict__ Xlo,
                                              const float* __restrict__ Xhi,
                                              float* __restrict__ Ylo, float* __restrict__ Yhi,
                                              POOL_ARGS)
{
    const PoolGeometry q = POOL_GEOMETRY;
    pool_body<false, true>(Xlo, Xhi, Ylo, Yhi, q);
}
