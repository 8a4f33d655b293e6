// A persistent std::thread pool behind deeprec::parallel_for (see common.h).
//
// Workers poll for 50 us after a job (see spin_ns), then sleep on a condition
// variable, so they use no CPU while torch's own threads work for longer. The
// range is cut into chunks that threads claim, so a late worker never delays a
// job. One job runs at a time; a caller that finds the pool busy (another
// Python thread with the GIL released) runs its whole range inline instead of
// waiting. After fork() the child gets a fresh pool, since
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
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "common.h"

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

// How long a waiting thread polls before it sleeps. A sleeping thread on a VM can take
// as long to wake (the idle vCPU must be woken by the host) as the kernels it would help
// with take to run (benchmarks/results/measurements.md). Polling yields the core at every
// turn, so torch's own threads keep it while they have work; 50 us catches the backward
// kernel that follows a forward, and longer polling bought nothing more.
// OMP_WAIT_POLICY=passive turns polling off here too.
int64_t spin_ns() {
  static const int64_t ns = [] {
    const char* p = std::getenv("OMP_WAIT_POLICY");
    const bool passive = p != nullptr && (std::strcmp(p, "passive") == 0 || std::strcmp(p, "PASSIVE") == 0);
    return passive ? int64_t{0} : int64_t{50000};
  }();
  return ns;
}

// Polls until done() or spin_ns() has passed; true if done() held.
template <typename F>
bool spin_until(F&& done) {
  const int64_t budget = spin_ns();
  if (budget <= 0) return done();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 1;; ++i) {
    if (done()) return true;
    std::this_thread::yield();
    if ((i & 15) == 0 &&
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
                .count() > budget)
      return done();
  }
}

// The range is cut into up to kChunksPerThread chunks per thread, which the caller and
// the workers claim one at a time. A worker that wakes late finds fewer chunks (or none)
// left, so a slow wake-up costs at most the parallelism it would have added, never a wait
// (the caller runs the chunks itself). Every kernel's result depends only on the range
// each item falls in, not on which thread ran it.
class Pool {
 public:
  // Runs fn over [0, n) on the calling thread and at most t-1 workers (the first t-1 the
  // pool made: a pool grown by an earlier, wider job never lends more); returns when done.
  void run(int64_t n, int t, const std::function<void(int64_t, int64_t)>& fn) {
    std::unique_lock<std::mutex> busy(job_mutex_, std::try_to_lock);
    if (!busy.owns_lock()) {
      fn(0, n);
      return;
    }
    grow(t - 1);
    const int64_t want = std::min<int64_t>(n, int64_t{t} * kChunksPerThread);
    const int64_t size = (n + want - 1) / want;
    const uint64_t count = static_cast<uint64_t>((n + size - 1) / size);
    uint64_t seq;
    {
      // Job fields are published by the release store of state_; the lock makes a worker
      // that is about to sleep see the new job (no lost wake-up).
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      mode_ = denormal_mode();
      n_ = n;
      size_ = size;
      helpers_.store(t - 1, std::memory_order_relaxed);
      finished_.store(0, std::memory_order_relaxed);
      seq = (state_.load(std::memory_order_relaxed) >> kSeqShift) + 1;
      state_.store((seq << kSeqShift) | (count << kCountShift), std::memory_order_release);
    }
    wake_.notify_all();
    work(seq, /*worker=*/false);
    const auto finished = [&] { return finished_.load(std::memory_order_acquire) == count; };
    if (!spin_until(finished)) {
      std::unique_lock<std::mutex> lk(m_);
      done_.wait(lk, finished);
    }
  }

 private:
  // state_ packs the job's sequence number, its chunk count and the next unclaimed chunk,
  // so one compare-and-swap claims a chunk of exactly the job it was counted for.
  static constexpr int kSeqShift = 32, kCountShift = 16;
  static constexpr uint64_t kField = 0xffff;
  static constexpr int64_t kChunksPerThread = 4;  // with <= 1024 threads, count < 2^16

  // Claims and runs chunks of job `seq` until none are left. The job's fields stay put
  // while a claimed chunk runs: the caller waits for every chunk before the next job.
  void work(uint64_t seq, bool worker) {
    for (;;) {
      uint64_t s = state_.load(std::memory_order_acquire);
      uint64_t k, count;
      do {
        count = (s >> kCountShift) & kField;
        k = s & kField;
        if ((s >> kSeqShift) != seq || k >= count) return;
      } while (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel,
                                             std::memory_order_acquire));
      const int64_t b = static_cast<int64_t>(k) * size_, e = std::min(n_, b + size_);
      if (worker) {
        with_denormal_mode(mode_, [&] { (*fn_)(b, e); });
      } else {
        (*fn_)(b, e);
      }
      if (finished_.fetch_add(1, std::memory_order_acq_rel) + 1 == count && worker) {
        std::lock_guard<std::mutex> lk(m_);  // the caller may be about to sleep on done_
        done_.notify_one();
      }
    }
  }

  void grow(int workers) {
    while (static_cast<int>(threads_.size()) < workers) {
      const int index = static_cast<int>(threads_.size());
      threads_.emplace_back([this, index] { loop(index); });
    }
  }

  // Worker `index` takes part in a job only if the job lends that many workers
  // (helpers_ > index); the others note the job as seen and wait for the next one.
  void loop(int index) {
    uint64_t seen = 0;
    const auto fresh = [&] { return (state_.load(std::memory_order_acquire) >> kSeqShift) != seen; };
    for (;;) {
      if (!spin_until(fresh)) {
        std::unique_lock<std::mutex> lk(m_);
        wake_.wait(lk, fresh);
      }
      seen = state_.load(std::memory_order_acquire) >> kSeqShift;
      if (index < helpers_.load(std::memory_order_acquire)) work(seen, /*worker=*/true);
    }
  }

  std::mutex job_mutex_;  // one job at a time
  std::mutex m_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  // Written by the caller before state_ is published; read only by a thread holding a
  // claimed chunk, which the caller waits for before it writes them again.
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  unsigned int mode_ = 0;  // the caller's denormal bits for the current job
  int64_t n_ = 0, size_ = 0;
  // How many workers the current job may use (its t - 1). Read after the job's state_ is
  // acquired; a worker that reads a newer job's value works on nothing of the older one,
  // since work() claims chunks only of the job whose sequence number it was given.
  std::atomic<int> helpers_{0};
  std::atomic<uint64_t> state_{0};     // (sequence << 32) | (chunks << 16) | next chunk
  std::atomic<uint64_t> finished_{0};  // chunks of the current job run to the end
};

// The process's pool. Never destroyed: joining threads during interpreter
// shutdown can deadlock, and the OS reclaims them at exit. Found without a lock: a fork
// while another thread held one would leave it held forever in the child. A pool made by
// another process (the parent, before a fork) is replaced; racing callers agree on one
// through a compare-and-swap, and the losers' pools are deleted unused.
struct OwnedPool {
  Pool* pool;
  pid_t owner;
};

Pool& pool() {
  static std::atomic<OwnedPool*> current{nullptr};
  const pid_t me = getpid();
  OwnedPool* seen = current.load(std::memory_order_acquire);
  while (seen == nullptr || seen->owner != me) {  // first use, or we are a forked child
    auto* mine = new OwnedPool{new Pool(), me};
    if (current.compare_exchange_strong(seen, mine, std::memory_order_acq_rel)) {
      return *mine->pool;  // the parent's pool (if any) is left as it is: its threads are gone
    }
    delete mine->pool;
    delete mine;
  }
  return *seen->pool;
}

}  // namespace

void parallel_for(int64_t n, int num_threads, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t by_grain = grain > 0 ? std::max<int64_t>(1, n / grain) : n;
  const int64_t t = std::min<int64_t>({static_cast<int64_t>(std::max(num_threads, 1)), by_grain, n, 1024});
  if (t <= 1) {
    fn(0, n);
    return;
  }
  pool().run(n, static_cast<int>(t), fn);
}

int parallel_threads_used(int64_t n, int num_threads, int64_t grain, int64_t spin_us) {
  std::mutex m;
  std::set<std::thread::id> ids;
  parallel_for(n, num_threads, grain, [&](int64_t, int64_t) {
    {
      std::lock_guard<std::mutex> lk(m);
      ids.insert(std::this_thread::get_id());
    }
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us);
    while (std::chrono::steady_clock::now() < until) {
    }
  });
  return static_cast<int>(ids.size());
}

}  // namespace deeprec
