// The CUDA side of the engine, as plain C++ (no CUDA headers): devices, device memory, streams,
// weights uploaded in their GGUF types, and the kernels of one llama layer. Everything here is
// implemented in libs/cuda/*.cu and *.cc and exists only in builds with PIPEINFER_CUDA=ON; the
// engine reaches it through engine/cuda_shard.cc.
//
// Conventions: every pointer argument named d_* is device memory of the stream's device; every
// function that takes a Stream enqueues work on it and returns without waiting. Matrices are in
// GGUF layout (rows = output features, cols = input features, row_bytes between rows); activations
// are row-major [n_rows][stride] F32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gguf/tensor_type.h"

namespace pipeinfer::cuda {

// --- Devices --------------------------------------------------------------------------------
struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  size_t total_bytes = 0;
  size_t free_bytes = 0;
};
// Number of usable devices. FAILED_PRECONDITION with a readable message ("no CUDA device: ...",
// naming the driver's error) when there is no driver or no device.
absl::StatusOr<int> DeviceCount();
// Checks that `ordinal` exists, makes it current on this thread and returns its description.
absl::StatusOr<DeviceInfo> UseDevice(int ordinal);

// --- Streams and memory ---------------------------------------------------------------------
class Stream {
 public:
  static absl::StatusOr<std::unique_ptr<Stream>> Create(int device);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  int device() const { return device_; }
  void* handle() const { return handle_; }  // cudaStream_t
  // Waits for all work enqueued so far; returns the first error any of it raised.
  absl::Status Synchronize();

 private:
  Stream() = default;
  int device_ = 0;
  void* handle_ = nullptr;
};

// Device memory (cudaMalloc), freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static absl::StatusOr<DeviceBuffer> Allocate(int device, size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  int device() const { return device_; }
  // Grows (never shrinks) to at least `bytes`; the contents are not kept.
  absl::Status Reserve(size_t bytes);

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  int device_ = 0;
};

// Page-locked host memory (cudaHostAlloc), freed on destruction: the staging buffers through
// which hidden states and logits leave and enter the device.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  static absl::StatusOr<PinnedBuffer> Allocate(size_t bytes);
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& o) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  absl::Status Reserve(size_t bytes);  // grows; contents not kept

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Asynchronous copies on `s` (host memory should be pinned for real overlap; pageable memory
// works but is staged by the driver).
absl::Status CopyToDevice(Stream& s, void* d_dst, const void* src, size_t bytes);
absl::Status CopyToHost(Stream& s, void* dst, const void* d_src, size_t bytes);
absl::Status CopyOnDevice(Stream& s, void* d_dst, const void* d_src, size_t bytes);
absl::Status Memset(Stream& s, void* d_dst, int value, size_t bytes);

// --- Weights --------------------------------------------------------------------------------
// A weight matrix on the device. F32, F16, BF16, Q8_0, Q4_0, Q4_K and Q6_K stay in their GGUF
// block layout (decoded on the fly by the kernels); every other type is converted to F16 at
// upload (converted_to_f16 = true; the caller logs it).
struct DeviceMatrix {
  gguf::TensorType type = gguf::TensorType::kF32;
  int64_t rows = 0, cols = 0;
  size_t row_bytes = 0;  // bytes between rows on the device (packed: cols / block * block bytes)
  DeviceBuffer data;
  bool converted_to_f16 = false;
};
// Uploads rows [row0, row0 + n_rows) and columns [col0, col0 + n_cols) of a host matrix in GGUF
// layout (`host` points at row 0, col 0; `host_row_bytes` between rows). col0 and n_cols must be
// multiples of the type's block size (INVALID_ARGUMENT otherwise). The result is packed.
absl::StatusOr<DeviceMatrix> UploadMatrix(Stream& s, gguf::TensorType type, const uint8_t* host,
                                          int64_t rows, int64_t cols, size_t host_row_bytes,
                                          int64_t row0, int64_t n_rows, int64_t col0,
                                          int64_t n_cols);
// Uploads floats (norm weights, biases).
absl::StatusOr<DeviceBuffer> UploadFloats(Stream& s, std::span<const float> values);

// Scratch space a matrix product may need (F16 copies of a weight tile and of the activations for
// cuBLAS), plus the cuBLAS handle of the stream. One per stream; not thread-safe.
class GemmContext {
 public:
  static absl::StatusOr<std::unique_ptr<GemmContext>> Create(Stream& s);
  ~GemmContext();
  Stream& stream() { return *s_; }
  // Implementation state (cuBLAS handle, F16 scratch); defined in the .cu file.
  struct State;
  State* state() { return st_.get(); }

 private:
  GemmContext() = default;
  Stream* s_ = nullptr;
  std::unique_ptr<State> st_;
};

// d_y[t * y_stride + r] = sum_c W[r][c] * d_x[t * x_stride + c] for t < n_tokens, r < W.rows.
// Few tokens (n_tokens <= kMatVecMaxTokens): a mat-vec kernel that decodes each weight block once
// for all tokens. More: the weight is dequantized to F16 (in tiles of rows) and multiplied with the
// activations (rounded to F16) by cuBLAS with F32 accumulation and F32 output.
inline constexpr int64_t kMatVecMaxTokens = 8;
absl::Status MatMul(GemmContext& g, const DeviceMatrix& w, const float* d_x, int64_t x_stride,
                    int64_t n_tokens, float* d_y, int64_t y_stride);

// --- Layer kernels (all on F32 rows) ----------------------------------------------------------
// d_out[r] = d_x[r] / sqrt(mean(d_x[r]^2) + eps) * d_w, for n_rows rows of n floats (stride n).
absl::Status RmsNormRows(Stream& s, const float* d_x, const float* d_w, int64_t n_rows, int64_t n,
                         float eps, float* d_out);
// d_x[r][j] += d_b[j] for n_rows rows of n floats with row stride `stride`.
absl::Status AddBiasRows(Stream& s, float* d_x, const float* d_b, int64_t n_rows, int64_t n,
                         int64_t stride);
// Per-head RMSNorm in place: every head of head_dim floats of every row (n_heads heads, rows of
// stride `stride`) is normalized with the shared weight d_w[head_dim].
absl::Status HeadRmsNorm(Stream& s, float* d_x, const float* d_w, int64_t n_rows, int32_t n_heads,
                         int32_t head_dim, int64_t stride, float eps);
// RoPE in place on n_heads heads of head_dim floats per row (row stride `stride`): pair i of a head
// is (2i, 2i+1) when neox = false, (i, i + n_rot/2) when neox = true, rotated by the angle whose
// cos and sin are d_cos[r * (n_rot/2) + i], d_sin[...] (computed on the host by RopeAngles).
absl::Status Rope(Stream& s, float* d_x, int64_t n_rows, int32_t n_heads, int32_t head_dim,
                  int64_t stride, int32_t n_rot, bool neox, const float* d_cos, const float* d_sin);

// Paged KV storage on the device, with the host cache's block layout (kv/kv_cache.h): block b of
// `block_bytes` bytes holds, per layer l, block_tokens key rows then block_tokens value rows of
// `row_elems` elements (F16 or F32). A physical slot p is block p / block_tokens, row
// p % block_tokens.
struct KvLayout {
  int32_t n_layers = 0;
  int32_t block_tokens = 16;
  int32_t row_elems = 0;  // K (and V) elements per slot and layer on this device
  bool f16 = true;
  size_t elem_bytes() const { return f16 ? 2 : 4; }
  size_t row_bytes() const { return static_cast<size_t>(row_elems) * elem_bytes(); }
  size_t block_bytes() const { return 2u * n_layers * block_tokens * row_bytes(); }
};
// Writes the K and V rows of n_rows tokens of `layer` (d_k, d_v: [n_rows][row_elems] F32, row
// strides k_stride / v_stride) into their physical slots d_slots[n_rows] (int64) of d_kv.
absl::Status KvWrite(Stream& s, const KvLayout& layout, void* d_kv, int32_t layer,
                     const int64_t* d_slots, const float* d_k, int64_t k_stride, const float* d_v,
                     int64_t v_stride, int64_t n_rows);
// Copies every layer's K and V rows of physical slot `src` to slot `dst` (copy of one token).
absl::Status KvCopySlot(Stream& s, const KvLayout& layout, void* d_kv, int64_t dst, int64_t src);
// Copies whole block `src` to block `dst` (copy on write).
absl::Status KvCopyBlock(Stream& s, const KvLayout& layout, void* d_kv, int64_t dst, int64_t src);

// Attention of n_rows query rows over their visible keys: row r attends to the physical slots
// d_vis_slots[d_vis_offsets[r] .. d_vis_offsets[r + 1]) (int32 offsets, int64 slots; at least one
// each). Query head h (of n_heads, head_dim floats each, row stride q_stride) reads KV head
// h / (n_heads / n_kv_heads) of the layer's K/V rows; scores are scaled by 1/sqrt(head_dim),
// softmaxed in F32, and the output (row stride out_stride) is the weighted sum of the V rows.
// d_out may be d_q (same strides).
//
// Many (row, head) pairs (prefill) take one pass: a block per pair walks all its keys. Few pairs
// (under twice the device's SM count, asked once per device, e.g. decode) would leave most of the
// GPU idle that way, so each pair's keys are then cut into chunks, one block per chunk (about 3
// blocks per SM in all, at most 32 chunks, and at most max_visible / 32 so that the longest row's
// chunks hold 32 keys or more), and a second kernel merges the chunks' partial softmax results;
// the two paths agree to float rounding. The partials live in `workspace`, device memory of the
// stream's device that Attention allocates when it is empty and grows when it is too small (after
// waiting for the stream, whose earlier kernels may still use it). A workspace belongs to one
// stream: calls enqueued on the same stream may share it, calls on different streams must not.
// nullptr: always one pass. The kernels load ahead: positions past a chunk's end (and negative
// slots, which are skipped) read slot 0's rows and ignore them, so d_kv must hold block 0.
absl::Status Attention(Stream& s, const KvLayout& layout, const void* d_kv, int32_t layer,
                       const float* d_q, int64_t q_stride, int64_t n_rows, int32_t n_heads,
                       int32_t n_kv_heads, int32_t head_dim, const int32_t* d_vis_offsets,
                       const int64_t* d_vis_slots, int32_t max_visible, float* d_out,
                       int64_t out_stride, DeviceBuffer* workspace);

// d_out[i] = silu(d_gate[i]) * d_up[i], i < n.
absl::Status SwiGlu(Stream& s, const float* d_gate, const float* d_up, float* d_out, int64_t n);
// d_x[i] += d_y[i], i < n.
absl::Status AddInPlace(Stream& s, float* d_x, const float* d_y, int64_t n);
// Row gather: d_out[i] = d_in[d_rows[i]] (rows of n floats), i < n_out. d_out must not alias d_in.
absl::Status GatherRows(Stream& s, const float* d_in, const int32_t* d_rows, int64_t n_out,
                        int64_t n, float* d_out);

// --- Collectives ------------------------------------------------------------------------------
// Sum all-reduce across the devices of one process (one rank per device), for tensor parallelism
// inside a stage. With NCCL (PIPEINFER_NCCL) it is ncclAllReduce in one group; without, it copies
// through device 0 (world size 1 needs no copy at all).
class Communicator {
 public:
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(std::span<const int> devices);
  ~Communicator();
  int world() const { return static_cast<int>(devices_.size()); }
  const char* backend() const;  // "nccl" or "copy"
  // d_bufs[i] (n floats on devices_[i]) all become the element-wise sum; enqueued on streams[i].
  absl::Status AllReduceSum(std::span<float* const> d_bufs, int64_t n,
                            std::span<Stream* const> streams);
  struct State;

 private:
  Communicator() = default;
  std::vector<int> devices_;
  std::unique_ptr<State> st_;
};

// --- Measurement --------------------------------------------------------------------------------
// Device-to-device copy bandwidth (bytes read + written per second) of `bytes` buffers, best of
// `reps`: the HBM peak the engine bench compares against.
absl::StatusOr<double> MeasureCopyBandwidth(int device, size_t bytes, int reps);

}  // namespace pipeinfer::cuda
