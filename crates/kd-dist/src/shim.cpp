// The C ABI over c10d that kd-dist's Rust code calls: a TCPStore rendezvous, a Gloo (or, when
// the libtorch has it, NCCL) process group, the collectives the trainer needs, each waiting
// with a timeout, and a synchronised BatchNorm as a custom autograd function.
//
// Every entry point catches C++ exceptions and returns them as a message (freed with
// kd_dist_free_str), so no exception crosses into Rust. The one place an exception leaves
// this file on purpose is the backward pass of the synchronised BatchNorm: it runs inside
// libtorch's autograd engine, which hands the exception to the caller of `backward()`, where
// tch turns it into an error.
//
// Lost ranks: every rank of a group runs a heartbeat thread that writes "<beat> <collectives
// begun>" under its own key of the group's store every 500 ms, over its own store connection.
// When a collective fails (a closed connection, a timeout), the failing rank watches the
// other ranks' keys for a few beats: a rank whose beat does not move is gone; when the store
// itself cannot be read, rank 0 (which serves it) is gone; a rank that beats but has begun
// fewer collectives has not reached this one. The message names them, so a job that lost a
// machine says which.

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How often a rank's heartbeat moves, and how long a failed collective watches the others'.
constexpr milliseconds kBeat{500};
constexpr milliseconds kWatch{2500};
constexpr milliseconds kPoll{100};
// The store connections of the heartbeat and of the diagnosis wait at most this long.
constexpr milliseconds kStoreTimeout{5000};

std::string beat_key(int rank) { return "kd_dist/beat/" + std::to_string(rank); }

// What the heartbeat thread and the group share; the thread keeps it alive when it outlives
// the group (a store call that blocks past the drop).
struct Pulse {
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  // Collectives this rank has begun, published with each beat.
  std::atomic<int64_t> seq{0};
};

c10::intrusive_ptr<c10d::TCPStore> client(const std::string& host, int port) {
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<uint16_t>(port);
  opts.isServer = false;
  opts.waitWorkers = false;
  opts.timeout = kStoreTimeout;
  return c10::make_intrusive<c10d::TCPStore>(host, opts);
}

void publish(c10d::Store& store, int rank, int64_t beat, int64_t seq) {
  std::string v = std::to_string(beat) + " " + std::to_string(seq);
  store.set(beat_key(rank), std::vector<uint8_t>(v.begin(), v.end()));
}

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;
  // A second store connection, only for reading the heartbeats after a failure.
  c10::intrusive_ptr<c10d::Store> probe;
  std::shared_ptr<Pulse> pulse = std::make_shared<Pulse>();
  std::thread heart;
  std::future<void> heart_done;
  milliseconds timeout;
  int rank;
  int world;
  bool cuda;

  ~Group() {
    if (heart.joinable()) {
      {
        std::lock_guard<std::mutex> l(pulse->mu);
        pulse->stop = true;
      }
      pulse->cv.notify_all();
      // A beat blocked on an unreachable store must not hold the drop: the thread owns
      // what it uses and may finish on its own.
      if (heart_done.wait_for(std::chrono::seconds(1)) == std::future_status::ready) {
        heart.join();
      } else {
        heart.detach();
      }
    }
    pg.reset();
    probe.reset();
    store.reset();
  }

  // Starts the heartbeat: the first beat is written before this returns, so every rank's
  // key exists once the group is built.
  void start_heart(const std::string& host, int port) {
    if (world < 2) {
      return;
    }
    probe = client(host, port);
    auto own = client(host, port);
    publish(*own, rank, 0, 0);
    std::promise<void> done;
    heart_done = done.get_future();
    heart = std::thread([own, pulse = pulse, rank = rank, done = std::move(done)]() mutable {
      int64_t beat = 0;
      try {
        std::unique_lock<std::mutex> l(pulse->mu);
        while (!pulse->cv.wait_for(l, kBeat, [&] { return pulse->stop; })) {
          l.unlock();
          publish(*own, rank, ++beat, pulse->seq.load());
          l.lock();
        }
      } catch (...) {
        // The store is gone (rank 0 left); nothing more to say, and the diagnosis of a
        // failed collective reads the store on its own connection.
      }
      done.set_value();
    });
  }
};

char* dup(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.c_str(), s.size() + 1);
  }
  return out;
}

// An exception's message without c10's C++ stack.
std::string message_of(const std::exception& e) {
  if (auto* c = dynamic_cast<const c10::Error*>(&e)) {
    return c->what_without_backtrace();
  }
  return e.what();
}

template <typename F>
int guard(char** err, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    *err = dup(message_of(e));
  } catch (...) {
    *err = dup("unknown C++ exception");
  }
  return 1;
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) {
    s += (i == 0 ? "" : ", ") + std::to_string(ranks[i]);
  }
  return s;
}

// A rank's last published "<beat> <seq>", or nothing when it never wrote one.
std::optional<std::pair<int64_t, int64_t>> read_beat(c10d::Store& store, int rank) {
  auto key = beat_key(rank);
  if (!store.check({key})) {
    return std::nullopt;
  }
  auto bytes = store.get(key);
  std::istringstream in(std::string(bytes.begin(), bytes.end()));
  int64_t beat = 0;
  int64_t seq = 0;
  in >> beat >> seq;
  return std::make_pair(beat, seq);
}

// Why a collective of `g` failed with `what`, naming the ranks that are gone or behind.
std::string diagnose(Group* g, const std::string& what) {
  if (g->world < 2 || !g->probe) {
    return what;
  }
  const int64_t mine = g->pulse->seq.load();
  std::vector<int> peers;
  for (int r = 0; r < g->world; ++r) {
    if (r != g->rank) {
      peers.push_back(r);
    }
  }
  std::vector<std::optional<std::pair<int64_t, int64_t>>> first(g->world), last(g->world);
  std::vector<bool> alive(g->world, false);
  try {
    for (int r : peers) {
      first[r] = read_beat(*g->probe, r);
    }
    const auto until = Clock::now() + kWatch;
    size_t moved = 0;
    while (moved < peers.size() && Clock::now() < until) {
      std::this_thread::sleep_for(kPoll);
      for (int r : peers) {
        if (alive[r]) {
          continue;
        }
        last[r] = read_beat(*g->probe, r);
        if (last[r] && (!first[r] || last[r]->first != first[r]->first)) {
          alive[r] = true;
          ++moved;
        }
      }
    }
  } catch (const std::exception& e) {
    if (g->rank == 0) {
      return "the group's store is unreachable (" + message_of(e) + "; " + what + ")";
    }
    return "rank 0 of " + std::to_string(g->world) +
           " (which serves the group's store) is gone (" + what + ")";
  }
  std::vector<int> gone;
  std::vector<int> behind;
  for (int r : peers) {
    if (!alive[r]) {
      gone.push_back(r);
    } else if (last[r]->second < mine) {
      behind.push_back(r);
    }
  }
  const std::string of = " of " + std::to_string(g->world);
  if (!gone.empty()) {
    return rank_list(gone) + of + (gone.size() == 1 ? " is" : " are") + " gone (" + what + ")";
  }
  if (!behind.empty()) {
    const bool one = behind.size() == 1;
    return rank_list(behind) + of + (one ? " is alive but has" : " are alive but have") +
           " not reached this collective (" +
           (one ? "it has begun " + std::to_string(last[behind[0]]->second) + ", " : "") +
           "this rank " + std::to_string(mine) + ") (" + what + ")";
  }
  return "every rank of " + std::to_string(g->world) + " is alive (" + what + ")";
}

// Begins one collective and waits for it; a failure comes back naming the lost ranks.
template <typename Issue>
void run(Group* g, Issue&& issue) {
  g->pulse->seq.fetch_add(1);
  std::string what;
  try {
    auto work = issue();
    if (work->wait(g->timeout)) {
      return;
    }
    what = "the collective did not complete within " + std::to_string(g->timeout.count()) + " ms";
  } catch (const std::exception& e) {
    what = message_of(e);
  } catch (...) {
    what = "unknown C++ exception";
  }
  throw std::runtime_error(diagnose(g, what));
}

void all_reduce_sum(Group* g, at::Tensor& t) {
  run(g, [&] {
    std::vector<at::Tensor> v{t};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = g->timeout;
    return g->pg->allreduce(v, o);
  });
}

std::vector<at::Tensor> gather_list(at::Tensor** ts, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; ++i) {
    v.push_back(*ts[i]);
  }
  return v;
}

Group* make_group(const std::string& host, int port, int rank, int world, int timeout_ms,
                  bool cuda) {
  auto timeout = milliseconds(timeout_ms);
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<uint16_t>(port);
  opts.isServer = rank == 0;
  opts.numWorkers = world;
  opts.waitWorkers = true;
  opts.timeout = timeout;
  auto store = c10::make_intrusive<c10d::TCPStore>(host, opts);
  auto* g = new Group{};
  g->store = store;
  g->timeout = timeout;
  g->rank = rank;
  g->world = world;
  g->cuda = cuda;
  return g;
}

bool is_loopback(const std::string& host) {
  return host.rfind("127.", 0) == 0 || host == "localhost" || host == "::1";
}

// ---- synchronised BatchNorm -------------------------------------------------------------

struct Layout {
  std::vector<int64_t> dims;   // every dimension but the channels
  std::vector<int64_t> shape;  // [1, C, 1, ...]: a per-channel vector against x
  int64_t channels;
};

Layout layout_of(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2, "sync_batch_norm: expected an input [N, C, ...], got ", x.sizes());
  Layout l;
  l.channels = x.size(1);
  l.dims.push_back(0);
  for (int64_t d = 2; d < x.dim(); ++d) {
    l.dims.push_back(d);
  }
  l.shape.assign(x.dim(), 1);
  l.shape[1] = l.channels;
  return l;
}

// Statistics and the normalisation run in float (double for double inputs); the few numbers
// that cross the ranks travel as double, so counts stay exact.
at::ScalarType acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// PyTorch's SyncBatchNorm (torch/nn/modules/_functions.py), with a two-pass variance.
struct SyncBatchNorm : public torch::autograd::Function<SyncBatchNorm> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias, at::Tensor running_mean,
                            at::Tensor running_var, double momentum, double eps,
                            int64_t group) {
    auto* g = reinterpret_cast<Group*>(group);
    const auto l = layout_of(x);
    const int64_t c = l.channels;
    for (const auto* p : {&weight, &bias}) {
      TORCH_CHECK(!p->has_value() || (*p)->numel() == c,
                  "sync_batch_norm: an affine parameter has ", (*p)->numel(),
                  " values for ", c, " channels");
    }
    TORCH_CHECK(running_mean.numel() == c && running_var.numel() == c,
                "sync_batch_norm: running statistics of ", running_mean.numel(), " and ",
                running_var.numel(), " values for ", c, " channels");
    const auto acc = acc_type(x);
    const auto xa = x.to(acc);
    const auto f64 = x.options().dtype(at::kDouble);
    // Pass 1: the global per-channel sum and count.
    auto stats = at::empty({c + 1}, f64);
    stats.narrow(0, 0, c).copy_(xa.sum(l.dims));
    stats.narrow(0, c, 1).fill_(static_cast<double>(c == 0 ? 0 : x.numel() / c));
    all_reduce_sum(g, stats);
    const double count = stats[c].item<double>();
    TORCH_CHECK(count > 1, "sync_batch_norm: expected more than 1 value per channel over the ",
                g->world, " ranks when training, got ", count);
    const auto mean = stats.narrow(0, 0, c) / count;
    // Pass 2: the global sum of squared deviations from the global mean.
    const auto centred = xa - mean.to(acc).view(l.shape);
    auto ssd = at::empty({c}, f64);
    ssd.copy_(centred.square().sum(l.dims));
    all_reduce_sum(g, ssd);
    const auto invstd = (ssd / count + eps).rsqrt();
    auto scale = invstd;
    if (weight.has_value()) {
      scale = scale * weight->to(at::kDouble).reshape({c});
    }
    auto y = centred * scale.to(acc).view(l.shape);
    if (bias.has_value()) {
      y = y + bias->to(acc).reshape(l.shape);
    }
    running_mean.mul_(1.0 - momentum)
        .add_(mean.to(running_mean.scalar_type()).view(running_mean.sizes()), momentum);
    running_var.mul_(1.0 - momentum)
        .add_((ssd / (count - 1)).to(running_var.scalar_type()).view(running_var.sizes()),
              momentum);
    ctx->save_for_backward({x, weight.has_value() ? *weight : at::Tensor(), mean.to(acc),
                            invstd.to(acc)});
    ctx->saved_data["group"] = group;
    ctx->saved_data["count"] = count;
    ctx->saved_data["has_weight"] = weight.has_value();
    ctx->saved_data["has_bias"] = bias.has_value();
    return y.to(x.scalar_type());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& weight = saved[1];
    const auto& mean = saved[2];
    const auto& invstd = saved[3];
    auto* g = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    const double count = ctx->saved_data["count"].toDouble();
    const bool has_weight = ctx->saved_data["has_weight"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // Gradient slots are the defined tensor inputs, in order: x, [weight], [bias], stats.
    const size_t weight_slot = 1;
    const size_t bias_slot = has_weight ? 2 : 1;
    const auto l = layout_of(x);
    const int64_t c = l.channels;
    const auto acc = acc_type(x);
    const auto dy = grads[0].to(acc);
    const auto centred = x.to(acc) - mean.view(l.shape);
    const auto sum_dy = dy.sum(l.dims);
    const auto sum_dy_xhat = (dy * centred).sum(l.dims) * invstd;
    at::Tensor gx;
    if (ctx->needs_input_grad(0)) {
      auto sums = at::cat({sum_dy, sum_dy_xhat}).to(at::kDouble);
      try {
        all_reduce_sum(g, sums);
      } catch (const std::exception& e) {
        throw std::runtime_error("c10d sync_batch_norm backward: " + message_of(e));
      }
      sums = (sums / count).to(acc);
      const auto mean_dy = sums.narrow(0, 0, c).view(l.shape);
      const auto mean_dy_xhat = sums.narrow(0, c, c);
      auto scale = invstd;
      if (has_weight) {
        scale = scale * weight.to(acc).reshape({c});
      }
      gx = (dy - mean_dy - centred * (invstd * mean_dy_xhat).view(l.shape)) *
           scale.view(l.shape);
      gx = gx.to(x.scalar_type());
    }
    // The affine gradients are this rank's own; the trainer averages them as DDP does.
    at::Tensor gw;
    at::Tensor gb;
    if (has_weight && ctx->needs_input_grad(weight_slot)) {
      gw = sum_dy_xhat.to(weight.scalar_type()).view(weight.sizes());
    }
    if (has_bias && ctx->needs_input_grad(bias_slot)) {
      gb = sum_dy.to(x.scalar_type());
    }
    // One entry per forward argument: x, weight, bias, running_mean, running_var, momentum,
    // eps, group.
    return {gx, gw, gb, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

void kd_dist_free_str(char* s) { std::free(s); }

int kd_dist_has_nccl() {
#ifdef USE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

// Rendezvous at host:port (rank 0 serves the store) and a Gloo group. The transport binds to
// GLOO_SOCKET_IFNAME when set (as PyTorch does), to the loopback address when the store is on
// it, and otherwise to the address this machine's hostname resolves to.
void* kd_dist_gloo(const char* host, int port, int rank, int world, int timeout_ms, char** err) {
  Group* out = nullptr;
  guard(err, [&] {
    std::unique_ptr<Group> g(make_group(host, port, rank, world, timeout_ms, false));
    auto o = c10d::ProcessGroupGloo::Options::create();
    o->timeout = g->timeout;
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    if (ifname != nullptr && *ifname != '\0') {
      o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (is_loopback(host)) {
      o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
    } else {
      o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    g->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(g->store, rank, world, o);
    g->start_heart(host, port);
    out = g.release();
  });
  return out;
}

// The same over NCCL on CUDA device `device`. Blocking waits (TORCH_NCCL_BLOCKING_WAIT, unless
// the user set it) make a collective's error or timeout an exception on the calling thread, and
// they turn off the watchdog's tearing down of the process on an error (c10d's
// TORCH_NCCL_ASYNC_ERROR_HANDLING), which would otherwise abort instead of reporting.
void* kd_dist_nccl(const char* host, int port, int rank, int world, int timeout_ms, int device,
                   char** err) {
  Group* out = nullptr;
  guard(err, [&] {
#ifdef USE_C10D_NCCL
    const int n = static_cast<int>(c10::cuda::device_count());
    TORCH_CHECK(device >= 0 && device < n, "CUDA device ", device, " does not exist (", n,
                " visible)");
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    setenv("TORCH_NCCL_BLOCKING_WAIT", "1", 0);
    std::unique_ptr<Group> g(make_group(host, port, rank, world, timeout_ms, true));
    auto o = c10d::ProcessGroupNCCL::Options::create();
    o->timeout = g->timeout;
    g->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(g->store, rank, world, o);
    g->start_heart(host, port);
    out = g.release();
#else
    (void)host;
    (void)port;
    (void)rank;
    (void)world;
    (void)timeout_ms;
    (void)device;
    throw std::runtime_error("this build of kd-dist has no NCCL");
#endif
  });
  return out;
}

void kd_dist_drop(void* g) { delete static_cast<Group*>(g); }

// op: 0 = sum, 1 = max, 2 = min. One tensor: Gloo reads a list as replicas of one tensor.
int kd_dist_all_reduce(void* g, at::Tensor* t, int op, char** err) {
  return guard(err, [&] {
    auto* grp = static_cast<Group*>(g);
    run(grp, [&] {
      std::vector<at::Tensor> v{*t};
      c10d::AllreduceOptions o;
      o.reduceOp = op == 1   ? c10d::ReduceOp::MAX
                   : op == 2 ? c10d::ReduceOp::MIN
                             : c10d::ReduceOp::SUM;
      o.timeout = grp->timeout;
      return grp->pg->allreduce(v, o);
    });
  });
}

int kd_dist_broadcast(void* g, at::Tensor* t, int root, char** err) {
  return guard(err, [&] {
    auto* grp = static_cast<Group*>(g);
    run(grp, [&] {
      std::vector<at::Tensor> v{*t};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      o.timeout = grp->timeout;
      return grp->pg->broadcast(v, o);
    });
  });
}

// outs: `world` tensors shaped like `input`, filled in rank order.
int kd_dist_all_gather(void* g, at::Tensor* input, at::Tensor** outs, int world, char** err) {
  return guard(err, [&] {
    auto* grp = static_cast<Group*>(g);
    run(grp, [&] {
      std::vector<at::Tensor> in{*input};
      std::vector<std::vector<at::Tensor>> out{gather_list(outs, world)};
      c10d::AllgatherOptions o;
      o.timeout = grp->timeout;
      return grp->pg->allgather(out, in, o);
    });
  });
}

int kd_dist_barrier(void* g, char** err) {
  return guard(err, [&] {
    auto* grp = static_cast<Group*>(g);
    run(grp, [&] {
      c10d::BarrierOptions o;
      o.timeout = grp->timeout;
      return grp->pg->barrier(o);
    });
  });
}

// weight and bias may be null. On success *out is a new tensor the caller owns.
int kd_dist_sync_batch_norm(void* g, const at::Tensor* x, const at::Tensor* weight,
                            const at::Tensor* bias, const at::Tensor* running_mean,
                            const at::Tensor* running_var, double momentum, double eps,
                            at::Tensor** out, char** err) {
  return guard(err, [&] {
    std::optional<at::Tensor> w;
    std::optional<at::Tensor> b;
    if (weight != nullptr && weight->defined()) {
      w = *weight;
    }
    if (bias != nullptr && bias->defined()) {
      b = *bias;
    }
    auto y = SyncBatchNorm::apply(*x, w, b, *running_mean, *running_var, momentum, eps,
                                  reinterpret_cast<int64_t>(g));
    *out = new at::Tensor(std::move(y));
  });
}

}  // extern "C"
