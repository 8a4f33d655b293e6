// A persistent std::thread pool behind deeprec::parallel_for (see common.h).
//
// Workers sleep on a condition variable between jobs, so they use no CPU while
// torch's own threads work. One job runs at a time; a caller that finds the
// pool busy (another Python thread with the GIL released) runs its whole range
// inline instead of waiting. After fork() the child gets a fresh pool, since
// the parent's threads do not exist there.
//
// Denormal handling is explicit: a job runs on every worker with the calling
// thread's flush-to-zero / denormals-are-zero bits (what torch.set_flush_denormal
// set there), and each worker restores its own bits afterwards. A setting never
// leaks into a later job, whichever thread created the pool and when.
#include <unistd.h>
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define DEEPREC_HAVE_MXCSR 1
#endif

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "../common.h"

namespace deeprec {
namespace {

#ifdef DEEPREC_HAVE_MXCSR
constexpr unsigned int kDenormalBits = 0x8040u;  // FTZ (bit 15) | DAZ (bit 6)
unsigned int denormal_mode() { return _mm_getcsr() & kDenormalBits; }
// Runs fn with the given FTZ/DAZ bits, then restores this thread's own.
template <typename F>
void with_denormal_mode(unsigned int mode, F&& fn) {
  const unsigned int own = _mm_getcsr();
  _mm_setcsr((own & ~kDenormalBits) | mode);
  fn();
  _mm_setcsr(own);
}
#else
unsigned int denormal_mode() { return 0; }
template <typename F>
void with_denormal_mode(unsigned int, F&& fn) { fn(); }
#endif

class Pool {
 public:
  // Runs chunks 1..t-1 of fn on workers and chunk 0 here; returns when all are done.
  void run(int64_t n, int t, const std::function<void(int64_t, int64_t)>& fn) {
    std::unique_lock<std::mutex> busy(job_mutex_, std::try_to_lock);
    if (!busy.owns_lock()) {
      fn(0, n);
      return;
    }
    grow(t - 1);
    const int64_t chunk = (n + t - 1) / t;
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      mode_ = denormal_mode();
      n_ = n;
      chunk_ = chunk;
      active_ = t - 1;
      remaining_ = t - 1;
      ++generation_;
    }
    wake_.notify_all();
    fn(0, std::min(n, chunk));
    std::unique_lock<std::mutex> lk(m_);
    done_.wait(lk, [&] { return remaining_ == 0; });
    fn_ = nullptr;
  }

 private:
  void grow(int workers) {
    while (static_cast<int>(threads_.size()) < workers) {
      const int id = static_cast<int>(threads_.size());
      threads_.emplace_back([this, id] { loop(id); });
    }
  }

  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lk(m_);
      wake_.wait(lk, [&] { return generation_ != seen; });
      seen = generation_;
      if (id >= active_) continue;  // this job needs fewer workers
      const auto* fn = fn_;
      const unsigned int mode = mode_;
      const int64_t b = (id + 1) * chunk_, e = std::min(n_, b + chunk_);
      lk.unlock();
      if (b < e) with_denormal_mode(mode, [&] { (*fn)(b, e); });
      lk.lock();
      if (--remaining_ == 0) done_.notify_one();
    }
  }

  std::mutex job_mutex_;  // one job at a time
  std::mutex m_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  unsigned int mode_ = 0;  // the caller's denormal bits for the current job
  int64_t n_ = 0, chunk_ = 0;
  int active_ = 0, remaining_ = 0;
  uint64_t generation_ = 0;
};

// The process's pool. Never destroyed: joining threads during interpreter
// shutdown can deadlock, and the OS reclaims them at exit.
Pool& pool() {
  static std::mutex create_mutex;
  static Pool* instance = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lk(create_mutex);
  if (instance == nullptr || owner != getpid()) {  // first use, or we are a forked child
    instance = new Pool();
    owner = getpid();
  }
  return *instance;
}

}  // namespace

void parallel_for(int64_t n, int num_threads, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t by_grain = grain > 0 ? std::max<int64_t>(1, n / grain) : n;
  const int64_t t = std::min<int64_t>({static_cast<int64_t>(std::max(num_threads, 1)), by_grain, n});
  if (t <= 1) {
    fn(0, n);
    return;
  }
  pool().run(n, static_cast<int>(t), fn);
}

}  // namespace deeprec
