// Weights on the device (UploadMatrix) and matrix products (MatMul): a mat-vec kernel for up to
// kMatVecMaxTokens tokens, cuBLAS beyond that. The kernels are in cuda_matmul.cu.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "cuda/cuda_host.h"
#include "cuda/cuda_internal.h"
#include "cuda/cuda_launch.h"
#include "cuda/cuda_ops.h"
#include "kernels/kernels.h"

namespace pipeinfer::cuda {
namespace internal {

bool KeptOnDevice(gguf::TensorType type) { return DeviceDecodes(type); }

absl::Status CheckUploadArgs(gguf::TensorType type, const uint8_t* host, int64_t rows, int64_t cols,
                             size_t host_row_bytes, int64_t row0, int64_t n_rows, int64_t col0,
                             int64_t n_cols) {
  constexpr const char* kWhere = "UploadMatrix";
  const auto info = gguf::LookupTensorType(static_cast<uint32_t>(type));
  if (!info.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhere, ": unknown tensor type id ", static_cast<uint32_t>(type)));
  }
  if (!KeptOnDevice(type) && !kernels::SupportsType(type)) {
    return absl::UnimplementedError(absl::StrCat(kWhere, ": type ", info->name,
                                                 " is neither decoded on the device nor "
                                                 "convertible to F16 by the CPU kernels"));
  }
  const int64_t block = info->block_size;
  PI_RETURN_IF_ERROR(Require(rows >= 0 && cols >= 0, kWhere, "negative matrix size"));
  PI_RETURN_IF_ERROR(Require(cols % block == 0, kWhere,
                             absl::StrCat("cols ", cols, " is not a multiple of the ", info->name,
                                          " block size ", block)));
  const uint64_t packed = static_cast<uint64_t>(cols / block) * info->type_size;
  PI_RETURN_IF_ERROR(Require(host_row_bytes >= packed, kWhere,
                             absl::StrCat("host_row_bytes ", host_row_bytes, " < ", packed,
                                          " bytes of a row of ", cols, " ", info->name)));
  PI_RETURN_IF_ERROR(Require(
      row0 >= 0 && n_rows >= 0 && row0 <= rows && n_rows <= rows - row0, kWhere,
      absl::StrCat("rows [", row0, ", ", row0 + n_rows, ") are not inside [0, ", rows, ")")));
  PI_RETURN_IF_ERROR(Require(
      col0 >= 0 && n_cols >= 0 && col0 <= cols && n_cols <= cols - col0, kWhere,
      absl::StrCat("cols [", col0, ", ", col0 + n_cols, ") are not inside [0, ", cols, ")")));
  PI_RETURN_IF_ERROR(
      Require(col0 % block == 0 && n_cols % block == 0, kWhere,
              absl::StrCat("col0 ", col0, " and n_cols ", n_cols, " must be multiples of the ",
                           info->name, " block size ", block)));
  PI_RETURN_IF_ERROR(
      Require(host != nullptr || n_rows == 0 || n_cols == 0, kWhere, "null host pointer"));
  return absl::OkStatus();
}

namespace {

absl::Status CublasStatus(cublasStatus_t st, absl::string_view where, absl::string_view call) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string msg = absl::StrCat(where, ": ", call, " failed: ", cublasGetStatusString(st),
                                       " (", cublasGetStatusName(st), ")");
  switch (st) {
    case CUBLAS_STATUS_ALLOC_FAILED:
      return absl::ResourceExhaustedError(msg);
    case CUBLAS_STATUS_INVALID_VALUE:
      return absl::InvalidArgumentError(msg);
    case CUBLAS_STATUS_NOT_INITIALIZED:
    case CUBLAS_STATUS_ARCH_MISMATCH:
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return absl::FailedPreconditionError(msg);
    default:
      return absl::InternalError(msg);
  }
}

#define PI_CUBLAS_RETURN_IF_ERROR(where, call)                                         \
  do {                                                                                 \
    const cublasStatus_t _pi_cublas_st = (call);                                       \
    if (_pi_cublas_st != CUBLAS_STATUS_SUCCESS) {                                      \
      return ::pipeinfer::cuda::internal::CublasStatus(_pi_cublas_st, (where), #call); \
    }                                                                                  \
  } while (0)

}  // namespace
}  // namespace internal

using internal::DeviceScope;
using internal::FitsInt;
using internal::Raw;
using internal::Require;

static_assert(kMatVecMaxTokens == 8, "cuda_matmul.cu's kMaxTokens must match kMatVecMaxTokens");

// --- Upload -----------------------------------------------------------------------------------

absl::StatusOr<DeviceMatrix> UploadMatrix(Stream& s, gguf::TensorType type, const uint8_t* host,
                                          int64_t rows, int64_t cols, size_t host_row_bytes,
                                          int64_t row0, int64_t n_rows, int64_t col0,
                                          int64_t n_cols) {
  constexpr const char* kWhere = "UploadMatrix";
  PI_RETURN_IF_ERROR(internal::CheckUploadArgs(type, host, rows, cols, host_row_bytes, row0, n_rows,
                                               col0, n_cols));
  const gguf::TensorTypeInfo& info = gguf::TypeInfo(type);
  // The slice's first byte: row row0, block col0 / block_size.
  const uint8_t* src = n_rows > 0 && n_cols > 0
                           ? host + static_cast<size_t>(row0) * host_row_bytes +
                                 static_cast<size_t>(col0 / info.block_size) * info.type_size
                           : nullptr;
  DeviceMatrix m;
  m.rows = n_rows;
  m.cols = n_cols;
  if (internal::KeptOnDevice(type)) {
    m.type = type;
    m.row_bytes = static_cast<size_t>(n_cols / info.block_size) * info.type_size;
    PI_ASSIGN_OR_RETURN(m.data, DeviceBuffer::Allocate(s.device(), m.row_bytes * n_rows));
    if (m.data.bytes() == 0) return m;
    DeviceScope scope;
    PI_RETURN_IF_ERROR(scope.Enter(s.device(), kWhere));
    if (host_row_bytes == m.row_bytes) {  // whole rows, back to back: one plain copy
      PI_CUDA_RETURN_IF_ERROR(kWhere, cudaMemcpyAsync(m.data.get(), src, m.data.bytes(),
                                                      cudaMemcpyHostToDevice, Raw(s)));
    } else {  // rows of the slice are host_row_bytes apart on the host, packed on the device
      PI_CUDA_RETURN_IF_ERROR(
          kWhere, cudaMemcpy2DAsync(m.data.get(), m.row_bytes, src, host_row_bytes, m.row_bytes,
                                    static_cast<size_t>(n_rows), cudaMemcpyHostToDevice, Raw(s)));
    }
    // The source is pageable (usually the mapped model file): wait before returning.
    PI_RETURN_IF_ERROR(s.Synchronize());
    return m;
  }

  // Converted on the host: decode each row of the slice with the CPU kernels, round to F16.
  m.type = gguf::TensorType::kF16;
  m.converted_to_f16 = true;
  m.row_bytes = static_cast<size_t>(n_cols) * 2;
  std::vector<uint16_t> halves(static_cast<size_t>(n_rows) * n_cols);
  if (!halves.empty()) {
    kernels::Matrix view;
    view.type = type;
    view.data = src;
    view.rows = n_rows;
    view.cols = n_cols;
    view.row_bytes = host_row_bytes;
    std::vector<float> row(n_cols);
    for (int64_t r = 0; r < n_rows; ++r) {
      kernels::DequantizeRow(view, r, row.data());
      kernels::FloatToHalfN(row.data(), halves.data() + r * n_cols, n_cols);
    }
  }
  const size_t bytes = halves.size() * sizeof(uint16_t);
  PI_ASSIGN_OR_RETURN(m.data, DeviceBuffer::Allocate(s.device(), bytes));
  if (bytes == 0) return m;
  PI_RETURN_IF_ERROR(CopyToDevice(s, m.data.get(), halves.data(), bytes));
  PI_RETURN_IF_ERROR(s.Synchronize());  // `halves` dies on return
  return m;
}

// --- GemmContext ------------------------------------------------------------------------------

struct GemmContext::State {
  int device = 0;
  cublasHandle_t handle = nullptr;
  DeviceBuffer w16;  // F16 tile of a dequantized weight, [tile rows][cols]
  DeviceBuffer x16;  // F16 activations, [n_tokens][cols]

  ~State() {
    if (handle == nullptr) return;
    DeviceScope scope;
    if (scope.Enter(device, "GemmContext::~GemmContext").ok()) cublasDestroy(handle);
  }
};

absl::StatusOr<std::unique_ptr<GemmContext>> GemmContext::Create(Stream& s) {
  constexpr const char* kWhere = "GemmContext::Create";
  auto st = std::make_unique<State>();
  st->device = s.device();
  DeviceScope scope;
  PI_RETURN_IF_ERROR(scope.Enter(s.device(), kWhere));
  PI_CUBLAS_RETURN_IF_ERROR(kWhere, cublasCreate(&st->handle));
  PI_CUBLAS_RETURN_IF_ERROR(kWhere, cublasSetStream(st->handle, Raw(s)));
  std::unique_ptr<GemmContext> g(new GemmContext());
  g->s_ = &s;
  g->st_ = std::move(st);
  return g;
}

GemmContext::~GemmContext() = default;

// --- MatMul -----------------------------------------------------------------------------------

namespace {

// Rows of a dequantized weight tile: about 64 MiB of F16, a multiple of 64 rows when that large.
constexpr int64_t kTileElems = int64_t{32} << 20;

// Grows a scratch buffer of the context's stream. Work already enqueued on the stream may still
// use the old buffer, so the stream is drained before the buffer is freed.
absl::Status GrowScratch(DeviceBuffer& b, int device, size_t bytes, cudaStream_t stream) {
  if (b.bytes() >= bytes) return absl::OkStatus();
  PI_CUDA_RETURN_IF_ERROR("MatMul", cudaStreamSynchronize(stream));
  b = DeviceBuffer();
  PI_ASSIGN_OR_RETURN(b, DeviceBuffer::Allocate(device, bytes));
  return absl::OkStatus();
}

absl::Status GemmF16(cublasHandle_t h, const void* a, int64_t lda, const void* b, int64_t ldb,
                     float* c, int64_t ldc, int64_t m, int64_t n, int64_t k) {
  const float alpha = 1.0f, beta = 0.0f;
  // C (m x n, col-major) = A^T B: A is the weight, row-major [m][k] = col-major k x m.
  PI_CUBLAS_RETURN_IF_ERROR(
      "MatMul", cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(m), static_cast<int>(n),
                             static_cast<int>(k), &alpha, a, CUDA_R_16F, static_cast<int>(lda), b,
                             CUDA_R_16F, static_cast<int>(ldb), &beta, c, CUDA_R_32F,
                             static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

}  // namespace

absl::Status MatMul(GemmContext& g, const DeviceMatrix& w, const float* d_x, int64_t x_stride,
                    int64_t n_tokens, float* d_y, int64_t y_stride) {
  constexpr const char* kWhere = "MatMul";
  Stream& s = g.stream();
  GemmContext::State& st = *g.state();
  PI_RETURN_IF_ERROR(Require(n_tokens >= 0, kWhere, "negative n_tokens"));
  if (n_tokens == 0 || w.rows == 0) return absl::OkStatus();
  const int block = internal::DeviceBlockSize(w.type);
  PI_RETURN_IF_ERROR(
      Require(block > 0, kWhere,
              absl::StrCat("weight type ", gguf::TensorTypeName(static_cast<uint32_t>(w.type)),
                           " is not a device type (upload it with UploadMatrix)")));
  PI_RETURN_IF_ERROR(Require(w.rows > 0 && w.cols > 0 && w.cols % block == 0, kWhere,
                             absl::StrCat("bad matrix shape ", w.rows, " x ", w.cols)));
  const size_t packed = static_cast<size_t>(w.cols / block) * internal::DeviceBlockBytes(w.type);
  PI_RETURN_IF_ERROR(Require(w.row_bytes >= packed && w.row_bytes % 2 == 0, kWhere,
                             absl::StrCat("row_bytes ", w.row_bytes, " < ", packed)));
  PI_RETURN_IF_ERROR(
      Require(w.data.get() != nullptr && w.data.bytes() >= (w.rows - 1) * w.row_bytes + packed,
              kWhere, "the matrix buffer is smaller than rows x row_bytes"));
  PI_RETURN_IF_ERROR(
      Require(w.data.device() == s.device(), kWhere,
              absl::StrCat("matrix on device ", w.data.device(), ", stream on ", s.device())));
  PI_RETURN_IF_ERROR(Require(d_x != nullptr && d_y != nullptr, kWhere, "null activation pointer"));
  PI_RETURN_IF_ERROR(Require(n_tokens == 1 || (x_stride >= w.cols && y_stride >= w.rows), kWhere,
                             absl::StrCat("strides x ", x_stride, " / y ", y_stride,
                                          " are smaller than cols ", w.cols, " / rows ", w.rows)));
  PI_RETURN_IF_ERROR(Require(FitsInt(w.rows) && FitsInt(w.cols) && FitsInt(n_tokens), kWhere,
                             "sizes beyond int range"));
  DeviceScope scope;
  PI_RETURN_IF_ERROR(scope.Enter(s.device(), kWhere));
  internal::ClearStaleError();
  const auto* wp = static_cast<const uint8_t*>(w.data.get());

  if (n_tokens <= kMatVecMaxTokens) {
    PI_CUDA_RETURN_IF_ERROR(
        kWhere, internal::LaunchMatVec(w.type, wp, w.rows, w.cols, w.row_bytes, d_x, x_stride,
                                       static_cast<int>(n_tokens), d_y, y_stride, Raw(s)));
    return absl::OkStatus();
  }

  PI_RETURN_IF_ERROR(
      Require(FitsInt(x_stride) && FitsInt(y_stride), kWhere, "strides beyond int range"));
  if (w.type == gguf::TensorType::kF32) {
    // F32 weights: one SGEMM straight on the weight and the activations (full F32 math).
    PI_RETURN_IF_ERROR(Require(w.row_bytes % 4 == 0 && FitsInt(w.row_bytes / 4), kWhere,
                               "F32 row_bytes not a multiple of 4"));
    const float alpha = 1.0f, beta = 0.0f;
    PI_CUBLAS_RETURN_IF_ERROR(
        kWhere,
        cublasSgemm(st.handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(w.rows),
                    static_cast<int>(n_tokens), static_cast<int>(w.cols), &alpha,
                    reinterpret_cast<const float*>(wp), static_cast<int>(w.row_bytes / 4), d_x,
                    static_cast<int>(x_stride), &beta, d_y, static_cast<int>(y_stride)));
    return absl::OkStatus();
  }

  // Activations to F16, packed [n_tokens][cols].
  PI_RETURN_IF_ERROR(GrowScratch(
      st.x16, s.device(), static_cast<size_t>(n_tokens) * w.cols * sizeof(uint16_t), Raw(s)));
  auto* x16 = st.x16.as<uint16_t>();
  PI_CUDA_RETURN_IF_ERROR(
      kWhere, internal::LaunchFloatToHalfRows(d_x, x_stride, n_tokens, w.cols, x16, Raw(s)));
  if (w.type == gguf::TensorType::kF16) {
    PI_RETURN_IF_ERROR(Require(FitsInt(w.row_bytes / 2), kWhere, "row_bytes beyond int range"));
    return GemmF16(st.handle, wp, w.row_bytes / 2, x16, w.cols, d_y, y_stride, w.rows, n_tokens,
                   w.cols);
  }

  // Other types: dequantize row tiles to F16 and multiply tile by tile.
  int64_t tile = std::max<int64_t>(1, kTileElems / w.cols);
  if (tile >= 64) tile -= tile % 64;
  tile = std::min(tile, w.rows);
  PI_RETURN_IF_ERROR(GrowScratch(st.w16, s.device(),
                                 static_cast<size_t>(tile) * w.cols * sizeof(uint16_t), Raw(s)));
  auto* w16 = st.w16.as<uint16_t>();
  for (int64_t r0 = 0; r0 < w.rows; r0 += tile) {
    const int64_t n = std::min(tile, w.rows - r0);
    PI_CUDA_RETURN_IF_ERROR(
        kWhere, internal::LaunchDequantToHalf(w.type, wp + r0 * w.row_bytes, n, w.cols, w.row_bytes,
                                              w16, Raw(s)));
    PI_RETURN_IF_ERROR(
        GemmF16(st.handle, w16, w.cols, x16, w.cols, d_y + r0, y_stride, n, n_tokens, w.cols));
  }
  return absl::OkStatus();
}

}  // namespace pipeinfer::cuda
