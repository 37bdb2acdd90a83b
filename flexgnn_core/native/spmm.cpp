// CSR sparse x dense product for CPU, the engine's aggregation: out[r, h, :] = sum_j val[j, h] * x[col[j], h, :]
// over the row's entries j in [crow[r], crow[r + 1]), in column order (the order torch.sparse.mm sums in).
//
// Why not torch.sparse.mm: on a 2-core AVX-512 box its CSR product ran at ~10% of copy bandwidth on 200k rows x
// 4M entries x 128 features (results/LOG.md, 2026-12-02), because each entry reloads and restores the output row.
// Here a block of B output features stays in registers over the whole row, and the rows of the next entries are
// prefetched in full (each row is B * 4 bytes, several cache lines). target_clones picks AVX-512 / AVX2 / baseline
// code at load time, so the build is portable (no -march=native). Rows are split over torch's intra-op threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>

namespace {

constexpr int64_t kPrefetch = 16;  // entries ahead (measured: 16 > 2, 8, 32 on the 200k / 4M graph)

template <typename P, typename I, int B>
__attribute__((target_clones("avx512f", "avx2", "default")))
void rows_block(const P* crow, const I* col, const float* val, const float* x, float* out, int64_t begin,
                int64_t end, int64_t F, int64_t H) {
  const int64_t C = F / H;
  const int64_t last = crow[end];
  for (int64_t r = begin; r < end; ++r) {
    const int64_t s = crow[r], t = crow[r + 1];
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t f0 = 0; f0 < C; f0 += B) {
        const int64_t off = h * C + f0;
        float acc[B];
        for (int k = 0; k < B; ++k) acc[k] = 0.f;
        for (int64_t j = s; j < t; ++j) {
          if (j + kPrefetch < last) {
            const char* p = reinterpret_cast<const char*>(x + static_cast<int64_t>(col[j + kPrefetch]) * F + off);
            for (int64_t q = 0; q < B * 4; q += 64) __builtin_prefetch(p + q);
          }
          const float w = val[j * H + h];
          const float* xr = x + static_cast<int64_t>(col[j]) * F + off;
          for (int k = 0; k < B; ++k) acc[k] += w * xr[k];
        }
        float* o = out + r * F + off;
        for (int k = 0; k < B; ++k) o[k] = acc[k];
      }
    }
  }
}

template <typename P, typename I>
void run(const torch::Tensor& crow, const torch::Tensor& col, const torch::Tensor& val, const torch::Tensor& x,
         torch::Tensor& out, int64_t F, int64_t H) {
  const P* cp = crow.data_ptr<P>();
  const I* ip = col.data_ptr<I>();
  const float* vp = val.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t rows = crow.size(0) - 1, C = F / H;
  // the widest register block that divides a head's width
  const int64_t B = C % 128 == 0 ? 128 : C % 64 == 0 ? 64 : C % 32 == 0 ? 32 : C % 16 == 0 ? 16 : C % 8 == 0 ? 8
                    : C % 4 == 0 ? 4 : 1;
  at::parallel_for(0, rows, 64, [&](int64_t b, int64_t e) {
    switch (B) {
      case 128: rows_block<P, I, 128>(cp, ip, vp, xp, op, b, e, F, H); break;
      case 64: rows_block<P, I, 64>(cp, ip, vp, xp, op, b, e, F, H); break;
      case 32: rows_block<P, I, 32>(cp, ip, vp, xp, op, b, e, F, H); break;
      case 16: rows_block<P, I, 16>(cp, ip, vp, xp, op, b, e, F, H); break;
      case 8: rows_block<P, I, 8>(cp, ip, vp, xp, op, b, e, F, H); break;
      case 4: rows_block<P, I, 4>(cp, ip, vp, xp, op, b, e, F, H); break;
      default: rows_block<P, I, 1>(cp, ip, vp, xp, op, b, e, F, H);
    }
  });
}

}  // namespace

// crow [rows + 1] and col [E] int32 or int64; val [E, heads] float32; x [width, heads * C] float32; all contiguous
// CPU tensors (checked by the caller, flexgnn_core/native/__init__.py). Returns out [rows, heads * C].
torch::Tensor csr_spmm(torch::Tensor crow, torch::Tensor col, torch::Tensor val, torch::Tensor x, int64_t heads) {
  const int64_t F = x.size(1);
  TORCH_CHECK(heads >= 1 && F % heads == 0, "csr_spmm: feature width ", F, " is not a multiple of heads ", heads);
  auto out = torch::empty({crow.size(0) - 1, F}, x.options());
  const bool c64 = crow.scalar_type() == torch::kInt64, i64 = col.scalar_type() == torch::kInt64;
  if (c64 && i64) run<int64_t, int64_t>(crow, col, val, x, out, F, heads);
  else if (c64) run<int64_t, int32_t>(crow, col, val, x, out, F, heads);
  else if (i64) run<int32_t, int64_t>(crow, col, val, x, out, F, heads);
  else run<int32_t, int32_t>(crow, col, val, x, out, F, heads);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("csr_spmm", &csr_spmm, "CSR x dense product, register-blocked, per-head values (CPU, float32)");
}
