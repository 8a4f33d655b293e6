// What every kernel checks about the indices it reads, and how it reports one it refuses.
//
// Python checks only metadata (dtypes, shapes, devices, lengths); the values of crow, col
// and a column index are checked here, by the kernels, as they read them. An index that
// fails is never dereferenced: the entry, row or column it names is skipped, and the first
// failure is recorded in the caller's error word. The CPU entry points then return
// kBadIndex (the binding raises); on CUDA the word stays in device memory until Python
// reads it at a sync it already makes (the loss read), so checking costs no host sync.
//
// The helpers are written once for both devices (host + device functions under nvcc).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DEEPREC_HD __host__ __device__ __forceinline__
#else
#define DEEPREC_HD inline
#endif

namespace deeprec {

// The error word: kErrorWords int64 in memory the caller provides (host memory for the
// CPU kernels, device memory for CUDA), all zero until a kernel refuses an index. Then:
// [0] the Check, [1] the caller's tag (which op called), [2] the position in the tensor
// the check names, [3] the value read there, [4] the bound or neighbour it broke.
constexpr int kErrorWords = 5;

// What failed. Python formats the message from the name (deeprec._C.CHECKS) and the word.
enum Check : int64_t {
  kCheckNone = 0,
  kCrowStart = 1,     // crow[0] != 0
  kCrowOrder = 2,     // crow[i] outside [crow[i-1], nnz] (bound: nnz)
  kCrowEnd = 3,       // crow[B] != nnz (bound: nnz)
  kColRange = 4,      // col[k] outside [0, N) (bound: N)
  kColOrder = 5,      // col[k] <= col[k-1] inside a row (bound: col[k-1])
  kUptrOrder = 6,     // uptr[u] not rising from 0 to nnz (bound: nnz)
  kUcolRange = 7,     // ucol[u] outside [0, N) (bound: N)
  kUcolOrder = 8,     // ucol[u] <= ucol[u-1] (bound: ucol[u-1])
  kPermRange = 9,     // perm[p] outside [0, nnz) (bound: nnz)
  kPermOrder = 10,    // perm[p] <= perm[p-1] inside a column group (bound: perm[p-1])
  kPermColumn = 11,   // col[perm[p]] != ucol of its group (bound: that ucol)
  kRowsRange = 12,    // rows[k] outside [0, B) (bound: B)
  kRowsMatch = 13,    // rows[k] is not entry k's row under crow (bound: the row's start)
  kGradRowRange = 14, // gradient row id outside [0, N) (bound: N)
  kGradRowOrder = 15, // gradient row ids not strictly increasing (bound: the previous id)
};

// Where a kernel reports: the caller's word and the tag it wants recorded with a failure.
struct ErrorSink {
  int64_t* words;
  int64_t tag;
};

// Records the first failure of the launch (later ones are dropped). Atomic, so any number
// of CPU threads or CUDA threads may report at once.
DEEPREC_HD void report(ErrorSink e, Check check, int64_t position, int64_t value,
                       int64_t bound) {
#if defined(__CUDA_ARCH__)
  auto* first = reinterpret_cast<unsigned long long*>(e.words);
  if (atomicCAS(first, 0ull, static_cast<unsigned long long>(check)) == 0ull) {
#else
  int64_t expected = 0;
  if (__atomic_compare_exchange_n(e.words, &expected, static_cast<int64_t>(check), false,
                                  __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
#endif
    e.words[1] = e.tag;
    e.words[2] = position;
    e.words[3] = value;
    e.words[4] = bound;
  }
}

#if !defined(__CUDA_ARCH__)
// Whether a (CPU) launch reported a failure; read after its threads have joined.
inline bool failed(ErrorSink e) { return __atomic_load_n(e.words, __ATOMIC_ACQUIRE) != 0; }
#endif

// Row i of a CSR batch of B rows and nnz entries: its entries [*k0, *k1), or false (and
// reported) when crow breaks there. Together the rows check all of crow: starts at 0,
// never decreases, stays inside [0, nnz], ends at nnz.
DEEPREC_HD bool row_entries(const int64_t* crow, int64_t i, int64_t B, int64_t nnz,
                            ErrorSink e, int64_t* k0, int64_t* k1) {
  const int64_t a = crow[i], b = crow[i + 1];
  if (i == 0 && a != 0) {
    report(e, kCrowStart, 0, a, 0);
    return false;
  }
  if (a < 0 || a > nnz) {
    report(e, kCrowOrder, i, a, nnz);
    return false;
  }
  if (b < a || b > nnz) {
    report(e, kCrowOrder, i + 1, b, nnz);
    return false;
  }
  if (i == B - 1 && b != nnz) {
    report(e, kCrowEnd, i + 1, b, nnz);
    return false;
  }
  *k0 = a;
  *k1 = b;
  return true;
}

// Entry k's column j, given the column read just before it in its row (-1 for a row's
// first entry): j, or -1 (reported) when it is outside [0, N) or does not rise from
// `before`. CPU loops carry `before` along; one thread per entry reads it (entry_column).
DEEPREC_HD int64_t checked_column(int64_t j, int64_t before, int64_t k, int64_t N, ErrorSink e) {
  if (j < 0 || j >= N) {
    report(e, kColRange, k, j, N);
    return -1;
  }
  if (j <= before) {
    report(e, kColOrder, k, j, before);
    return -1;
  }
  return j;
}

// checked_column for entry k of a row whose entries start at k0, reading both columns.
template <typename I>
DEEPREC_HD int64_t entry_column(const I* col, int64_t k, int64_t k0, int64_t N, ErrorSink e) {
  const int64_t before = k > k0 ? static_cast<int64_t>(col[k - 1]) : -1;
  return checked_column(static_cast<int64_t>(col[k]), before, k, N, e);
}

// The CPU kernels' row loop: f(k, j) for every entry k of row i, with j its checked column,
// or -1 for an entry the checks refused (row i's offsets checked first: a refused row has no
// entries).
template <typename I, typename F>
inline void for_each_entry(const int64_t* crow, const I* col, int64_t i, int64_t B, int64_t N,
                           int64_t nnz, ErrorSink e, F&& f) {
  int64_t k0 = 0, k1 = 0;
  if (!row_entries(crow, i, B, nnz, e, &k0, &k1)) return;
  int64_t before = -1;
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t raw = static_cast<int64_t>(col[k]);
    f(k, checked_column(raw, before, k, N, e));
    before = raw;
  }
}

// Column group u of a column index (U groups over nnz entries and N columns): its
// positions [*p0, *p1) in perm and its column *j, or false (reported). Together the groups
// check uptr (rising from 0 to nnz) and ucol (strictly increasing inside [0, N)).
DEEPREC_HD bool column_group(const int64_t* ucol, const int64_t* uptr, int64_t u, int64_t U,
                             int64_t N, int64_t nnz, ErrorSink e, int64_t* p0, int64_t* p1,
                             int64_t* j) {
  const int64_t a = uptr[u], b = uptr[u + 1];
  if ((u == 0 && a != 0) || a < 0 || a > nnz) {
    report(e, kUptrOrder, u, a, nnz);
    return false;
  }
  if (b < a || b > nnz || (u == U - 1 && b != nnz)) {
    report(e, kUptrOrder, u + 1, b, nnz);
    return false;
  }
  const int64_t c = ucol[u];
  if (c < 0 || c >= N) {
    report(e, kUcolRange, u, c, N);
    return false;
  }
  if (u > 0 && c <= ucol[u - 1]) {
    report(e, kUcolOrder, u, c, ucol[u - 1]);
    return false;
  }
  *p0 = a;
  *p1 = b;
  *j = c;
  return true;
}

// The entry at position p of column j's group (which starts at p0): its id *k and row *r,
// or false (reported). Checked against the batch itself (crow, col of B rows, nnz
// entries): the entry lies in column j, the group lists its entries once each in
// ascending order, and rows[k] is k's row. With column_group this proves perm a
// permutation grouping exactly this batch's entries by column.
template <typename I>
DEEPREC_HD bool group_entry(const int64_t* perm, const int64_t* rows, const int64_t* crow,
                            const I* col, int64_t p, int64_t p0, int64_t j, int64_t B,
                            int64_t nnz, ErrorSink e, int64_t* k, int64_t* r) {
  const int64_t id = perm[p];
  if (id < 0 || id >= nnz) {
    report(e, kPermRange, p, id, nnz);
    return false;
  }
  if (p > p0 && id <= perm[p - 1]) {
    report(e, kPermOrder, p, id, perm[p - 1]);
    return false;
  }
  if (static_cast<int64_t>(col[id]) != j) {
    report(e, kPermColumn, p, id, j);
    return false;
  }
  const int64_t row = rows[id];
  if (row < 0 || row >= B) {
    report(e, kRowsRange, id, row, B);
    return false;
  }
  if (id < crow[row] || id >= crow[row + 1]) {
    report(e, kRowsMatch, id, row, crow[row]);
    return false;
  }
  *k = id;
  *r = row;
  return true;
}

// Gradient row u of a row-sparse update (U sorted, unique row ids over N rows): its row
// id, or -1 (reported).
DEEPREC_HD int64_t grad_row(const int64_t* ids, int64_t u, int64_t N, ErrorSink e) {
  const int64_t j = ids[u];
  if (j < 0 || j >= N) {
    report(e, kGradRowRange, u, j, N);
    return -1;
  }
  if (u > 0 && j <= ids[u - 1]) {
    report(e, kGradRowOrder, u, j, ids[u - 1]);
    return -1;
  }
  return j;
}

}  // namespace deeprec
