#include "cluster/link_emulation.h"

#include <arpa/inet.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace pipeinfer::cluster {
namespace {

// 198.18.0.0/15, cut into 128 blocks of /22 (256 /30 hops each).
constexpr uint32_t kRangeBase = (198u << 24) | (18u << 16);
constexpr int kBlocks = 128;
constexpr uint32_t kBlockSize = 1024;
constexpr int kManagementSubnet = 128;  // management hops use /30 number 128 + i of the block

std::string Ipv4(uint32_t a) {
  return absl::StrCat(a >> 24, ".", (a >> 16) & 255, ".", (a >> 8) & 255, ".", a & 255);
}

std::optional<uint32_t> ParseIpv4(absl::string_view s) {
  in_addr a{};
  const std::string text(s);
  if (inet_pton(AF_INET, text.c_str(), &a) != 1) return std::nullopt;
  return ntohl(a.s_addr);
}

// The [first, last] address ranges of every IPv4 address and prefix mentioned in `text` (output of
// `ip -4 addr` / `ip -4 route`): a token "A.B.C.D" or "A.B.C.D/L".
std::vector<std::pair<uint32_t, uint32_t>> RangesIn(const std::string& text) {
  std::vector<std::pair<uint32_t, uint32_t>> out;
  for (absl::string_view tok : absl::StrSplit(text, absl::ByAnyChar(" \t\n"), absl::SkipEmpty())) {
    const size_t slash = tok.find('/');
    const std::optional<uint32_t> a = ParseIpv4(tok.substr(0, slash));
    if (!a) continue;
    int len = 32;
    if (slash != absl::string_view::npos && !absl::SimpleAtoi(tok.substr(slash + 1), &len))
      continue;
    if (len < 0 || len > 32) continue;
    const uint32_t mask = len == 0 ? 0 : ~0u << (32 - len);
    out.emplace_back(*a & mask, (*a & mask) | ~mask);
  }
  return out;
}

// tbf's bucket: at least 32 KiB (several MTU-sized packets), else 10 ms worth of the rate, so that
// fast rates are not limited by the timer granularity.
int64_t BurstBytes(double rate_mbps) {
  const double per_10ms = rate_mbps * 1e6 / 8 / 100;
  return std::max<int64_t>(32 * 1024, static_cast<int64_t>(std::ceil(per_10ms)));
}

// `ip` with `-n NS` when the device lives in a namespace.
std::vector<std::string> Ip(const std::string& ns, std::vector<std::string> rest) {
  std::vector<std::string> argv = {"ip"};
  if (!ns.empty()) argv.insert(argv.end(), {"-n", ns});
  argv.insert(argv.end(), rest.begin(), rest.end());
  return argv;
}

absl::Status Run(const std::vector<std::string>& argv) { return RunNetTool(argv).status(); }

absl::Status ConfigureEnd(const std::string& ns, const std::string& dev, const std::string& addr,
                          const LinkTopology& t, bool limited) {
  if (auto st = Run(Ip(ns, {"addr", "add", addr + "/30", "dev", dev})); !st.ok()) return st;
  if (limited) {
    std::vector<std::string> tc = {"tc"};
    if (!ns.empty()) tc.insert(tc.end(), {"-n", ns});
    const int64_t kbit = std::max<int64_t>(8, std::llround(t.rate_mbps * 1000));
    tc.insert(tc.end(),
              {"qdisc", "add", "dev", dev, "root", "tbf", "rate", absl::StrCat(kbit, "kbit"),
               "burst", absl::StrCat(t.burst_bytes), "latency", "100ms"});
    if (auto st = Run(tc); !st.ok()) return st;
  }
  return Run(Ip(ns, {"link", "set", dev, "up"}));
}

// Creates one veth pair and configures both ends; `*added` tells whether the pair was made.
absl::Status CreateHop(const VethHop& h, const LinkTopology& t, bool* added) {
  std::vector<std::string> add = {"ip", "link", "add", h.dev_a};
  if (!h.ns_a.empty()) add.insert(add.end(), {"netns", h.ns_a});
  add.insert(add.end(), {"type", "veth", "peer", "name", h.dev_b});
  if (!h.ns_b.empty()) add.insert(add.end(), {"netns", h.ns_b});
  if (auto st = Run(add); !st.ok()) return st;
  *added = true;
  if (auto st = ConfigureEnd(h.ns_a, h.dev_a, h.addr_a, t, h.limited); !st.ok()) return st;
  return ConfigureEnd(h.ns_b, h.dev_b, h.addr_b, t, h.limited);
}

bool IsMissing(const absl::Status& st) {
  const absl::string_view m = st.message();
  return absl::StrContains(m, "Cannot find device") || absl::StrContains(m, "No such device") ||
         absl::StrContains(m, "No such file") || absl::StrContains(m, "does not exist") ||
         absl::StrContains(m, "Invalid netns name");
}

nlohmann::json HopJson(const VethHop& h) {
  return {{"ns_a", h.ns_a},   {"dev_a", h.dev_a},   {"addr_a", h.addr_a},  {"ns_b", h.ns_b},
          {"dev_b", h.dev_b}, {"addr_b", h.addr_b}, {"limited", h.limited}};
}

VethHop HopFromJson(const nlohmann::json& j) {
  VethHop h;
  h.ns_a = j.value("ns_a", "");
  h.dev_a = j.value("dev_a", "");
  h.addr_a = j.value("addr_a", "");
  h.ns_b = j.value("ns_b", "");
  h.dev_b = j.value("dev_b", "");
  h.addr_b = j.value("addr_b", "");
  h.limited = j.value("limited", true);
  return h;
}

}  // namespace

std::vector<std::string> LinkTopology::RootDevices() const {
  std::vector<std::string> devs;
  for (const auto* hops : {&data, &management}) {
    for (const VethHop& h : *hops) {
      if (h.ns_a.empty()) devs.push_back(h.dev_a);
      if (h.ns_b.empty()) devs.push_back(h.dev_b);
    }
  }
  return devs;
}

absl::Status CheckLinkEmulationAvailable() {
  if (geteuid() != 0) {
    return absl::PermissionDeniedError(
        "--emulate-link-mbps needs root (network namespaces and tc)");
  }
  for (const char* tool : {"ip", "tc"}) {
    absl::StatusOr<std::string> v = RunNetTool({tool, "-V"});
    if (!v.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--emulate-link-mbps needs `", tool, "` (package iproute2): ", v.status().message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LinkTopology> PlanLinks(int stages, double rate_mbps) {
  if (stages < 1 || stages > 64) {
    return absl::InvalidArgumentError(absl::StrCat("link emulation: bad stage count ", stages));
  }
  if (!(rate_mbps > 0)) return absl::InvalidArgumentError("link emulation needs a rate > 0");
  absl::StatusOr<std::string> addrs = RunNetTool({"ip", "-4", "-o", "addr", "show"});
  if (!addrs.ok()) return addrs.status();
  absl::StatusOr<std::string> routes = RunNetTool({"ip", "-4", "route", "show", "table", "all"});
  if (!routes.ok()) return routes.status();
  absl::StatusOr<std::string> links = RunNetTool({"ip", "-o", "link", "show"});
  if (!links.ok()) return links.status();
  absl::StatusOr<std::string> spaces = RunNetTool({"ip", "netns", "list"});
  if (!spaces.ok()) return spaces.status();
  std::vector<std::pair<uint32_t, uint32_t>> used = RangesIn(*addrs);
  for (const auto& r : RangesIn(*routes)) {
    if (r.first != 0 || r.second != ~0u) used.push_back(r);  // the default route covers all
  }
  for (int k = 0; k < kBlocks; ++k) {
    const uint32_t first = kRangeBase + static_cast<uint32_t>(k) * kBlockSize;
    const uint32_t last = first + kBlockSize - 1;
    const bool overlaps = std::any_of(used.begin(), used.end(), [&](const auto& r) {
      return r.first <= last && first <= r.second;
    });
    const std::string prefix = absl::StrCat("pil", k);
    // Names start with the prefix and go on with '-', 'd' or 'm' (never a digit).
    const bool named = absl::StrContains(*links, " " + prefix + "d") ||
                       absl::StrContains(*links, " " + prefix + "m") ||
                       absl::StrContains(*spaces, prefix + "-");
    if (overlaps || named) continue;
    LinkTopology t;
    t.rate_mbps = rate_mbps;
    t.burst_bytes = BurstBytes(rate_mbps);
    t.prefix = prefix;
    t.block = Ipv4(first) + "/22";
    auto hop = [&](int subnet, const std::string& tag, std::string ns_a, std::string ns_b,
                   bool limited) {
      VethHop h;
      h.ns_a = std::move(ns_a);
      h.ns_b = std::move(ns_b);
      h.dev_a = prefix + tag + "a";
      h.dev_b = prefix + tag + "b";
      h.addr_a = Ipv4(first + 4 * static_cast<uint32_t>(subnet) + 1);
      h.addr_b = Ipv4(first + 4 * static_cast<uint32_t>(subnet) + 2);
      h.limited = limited;
      return h;
    };
    for (int i = 0; i < stages; ++i) t.namespaces.push_back(absl::StrCat(prefix, "-s", i));
    for (int h = 0; h <= stages; ++h) {
      const std::string a = h == 0 ? "" : t.namespaces[h - 1];
      const std::string b = h == stages ? "" : t.namespaces[h];
      t.data.push_back(hop(h, absl::StrCat("d", h), a, b, true));
    }
    for (int i = 0; i < stages; ++i) {
      t.management.push_back(
          hop(kManagementSubnet + i, absl::StrCat("m", i), "", t.namespaces[i], false));
    }
    return t;
  }
  return absl::ResourceExhaustedError(
      "link emulation: every /22 block of 198.18.0.0/15 is in use (run `pipeinfer down` for "
      "clusters left behind, or check `ip netns list`)");
}

absl::Status CreateLinks(const LinkTopology& t) {
  // What exists so far, so that a failure (say, a name another cluster took meanwhile) removes
  // only what this call created.
  LinkTopology created = t;
  created.namespaces.clear();
  created.data.clear();
  created.management.clear();
  auto fail = [&](absl::Status st) {
    (void)RemoveLinks(created);
    return absl::Status(st.code(), absl::StrCat("link emulation: ", st.message()));
  };
  for (const std::string& ns : t.namespaces) {
    if (auto st = Run({"ip", "netns", "add", ns}); !st.ok()) return fail(st);
    created.namespaces.push_back(ns);
    if (auto st = Run(Ip(ns, {"link", "set", "lo", "up"})); !st.ok()) return fail(st);
  }
  for (const auto& [hops, out] :
       {std::pair{&t.data, &created.data}, std::pair{&t.management, &created.management}}) {
    for (const VethHop& h : *hops) {
      bool added = false;
      const absl::Status st = CreateHop(h, t, &added);
      if (added) out->push_back(h);
      if (!st.ok()) return fail(st);
    }
  }
  return absl::OkStatus();
}

absl::Status RemoveLinks(const LinkTopology& t, std::vector<std::string>* report) {
  absl::Status first_error;
  auto note = [&](const absl::Status& st) {
    if (!st.ok() && !IsMissing(st) && first_error.ok()) first_error = st;
  };
  for (const std::string& ns : t.namespaces) {
    // Processes still inside (a crashed `up`'s children) would keep the namespace alive.
    if (absl::StatusOr<std::string> pids = RunNetTool({"ip", "netns", "pids", ns}); pids.ok()) {
      for (absl::string_view p : absl::StrSplit(*pids, '\n', absl::SkipEmpty())) {
        int pid = 0;
        if (absl::SimpleAtoi(p, &pid) && pid > 1 && pid != getpid()) kill(pid, SIGKILL);
      }
    }
    const absl::Status st = Run({"ip", "netns", "del", ns});
    note(st);
    if (st.ok() && report) report->push_back(absl::StrCat("removed network namespace ", ns));
  }
  // Deleting a namespace destroys its veth ends and their peers; whatever remains in the root
  // namespace (a namespace kept alive by a process) goes explicitly.
  for (const std::string& dev : t.RootDevices()) {
    const absl::Status st = Run({"ip", "link", "del", dev});
    if (!IsMissing(st)) note(st);
  }
  return first_error;
}

std::string LinkTopologyToJson(const LinkTopology& t) {
  nlohmann::json j;
  j["rate_mbps"] = t.rate_mbps;
  j["burst_bytes"] = t.burst_bytes;
  j["prefix"] = t.prefix;
  j["block"] = t.block;
  j["namespaces"] = t.namespaces;
  j["data"] = nlohmann::json::array();
  for (const VethHop& h : t.data) j["data"].push_back(HopJson(h));
  j["management"] = nlohmann::json::array();
  for (const VethHop& h : t.management) j["management"].push_back(HopJson(h));
  return j.dump();
}

absl::StatusOr<LinkTopology> LinkTopologyFromJson(const std::string& json) {
  LinkTopology t;
  try {
    const nlohmann::json j = nlohmann::json::parse(json);
    t.rate_mbps = j.value("rate_mbps", 0.0);
    t.burst_bytes = j.value("burst_bytes", int64_t{0});
    t.prefix = j.value("prefix", "");
    t.block = j.value("block", "");
    t.namespaces = j.value("namespaces", std::vector<std::string>{});
    for (const auto& h : j.value("data", nlohmann::json::array())) t.data.push_back(HopFromJson(h));
    for (const auto& h : j.value("management", nlohmann::json::array())) {
      t.management.push_back(HopFromJson(h));
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("bad link emulation state: ", e.what()));
  }
  if (!t.empty() &&
      (t.data.size() != t.namespaces.size() + 1 || t.management.size() != t.namespaces.size())) {
    return absl::InvalidArgumentError("bad link emulation state: hop counts do not match");
  }
  return t;
}

}  // namespace pipeinfer::cluster
