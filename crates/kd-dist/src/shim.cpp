// The C ABI over c10d that kd-dist's Rust code calls: a TCPStore rendezvous, a Gloo process
// group, and the collectives the trainer needs, each waiting with a timeout. Every entry point
// catches C++ exceptions and returns them as a message (freed with kd_dist_free_str), so no
// exception crosses into Rust.

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  std::chrono::milliseconds timeout;
  int rank;
  int world;
};

char* dup(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.c_str(), s.size() + 1);
  }
  return out;
}

template <typename F>
int guard(char** err, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    *err = dup(e.what());
  } catch (...) {
    *err = dup("unknown C++ exception");
  }
  return 1;
}

std::vector<at::Tensor> gather_list(at::Tensor** ts, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; ++i) {
    v.push_back(*ts[i]);
  }
  return v;
}

void wait(Group* g, const c10::intrusive_ptr<c10d::Work>& work) {
  if (!work->wait(g->timeout)) {
    throw std::runtime_error("collective did not complete within the timeout");
  }
}

}  // namespace

extern "C" {

void kd_dist_free_str(char* s) { std::free(s); }

// Rendezvous at host:port (rank 0 serves the store) and a Gloo group over `iface_host`.
void* kd_dist_gloo(const char* host, int port, int rank, int world, int timeout_ms, char** err) {
  Group* out = nullptr;
  guard(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(port);
    opts.isServer = rank == 0;
    opts.numWorkers = world;
    opts.waitWorkers = true;
    opts.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto o = c10d::ProcessGroupGloo::Options::create();
    o->timeout = timeout;
    o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(std::string(host)));
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, o);
    out = new Group{store, pg, timeout, rank, world};
  });
  return out;
}

void kd_dist_drop(void* g) { delete static_cast<Group*>(g); }

// op: 0 = sum, 1 = max, 2 = min. One tensor: Gloo reads a list as replicas of one tensor.
int kd_dist_all_reduce(void* g, at::Tensor* t, int op, char** err) {
  return guard(err, [&] {
    auto* grp = static_cast<Group*>(g);
    std::vector<at::Tensor> v{*t};
    c10d::AllreduceOptions o;
    o.reduceOp = op == 1 ? c10d::ReduceOp::MAX : op == 2 ? c10d::ReduceOp::MIN : c10d::ReduceOp::SUM;
    o.timeout = grp->timeout;
    wait(grp, grp->pg->allreduce(v, o));
  });
}

int kd_dist_broadcast(void* g, at::Tensor* t, int root, char** err) {
  return guard(err, [&] {
    auto* grp = static_cast<Group*>(g);
    std::vector<at::Tensor> v{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = grp->timeout;
    wait(grp, grp->pg->broadcast(v, o));
  });
}

// outs: `world` tensors shaped like `input`, filled in rank order.
int kd_dist_all_gather(void* g, at::Tensor* input, at::Tensor** outs, int world, char** err) {
  return guard(err, [&] {
    auto* grp = static_cast<Group*>(g);
    std::vector<at::Tensor> in{*input};
    std::vector<std::vector<at::Tensor>> out{gather_list(outs, world)};
    c10d::AllgatherOptions o;
    o.timeout = grp->timeout;
    wait(grp, grp->pg->allgather(out, in, o));
  });
}

int kd_dist_barrier(void* g, char** err) {
  return guard(err, [&] {
    auto* grp = static_cast<Group*>(g);
    c10d::BarrierOptions o;
    o.timeout = grp->timeout;
    wait(grp, grp->pg->barrier(o));
  });
}

}  // extern "C"
