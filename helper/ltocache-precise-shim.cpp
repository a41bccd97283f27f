// ltocache-precise-shim: the post-import module's digest as a by-product of
// the real backend (docs/precise-invalidation.md, "The shim").
//
// clang's ThinLTO backend (runThinLTOBackend) calls llvm::lto::thinBackend in
// the shared libLLVM through the PLT, and ignores -fpass-plugin. Preloaded
// (LD_PRELOAD) into clang, this library defines that exact symbol: it chains
// a PostImportModuleHook -- where the helper hashes and where -save-temps
// writes X.3.import.bc -- onto clang's own Config, calls the real function,
// and puts the hook back. The hook hashes the module with the helper's own
// code (precise-common.h) and returns what the previous hook returns (true
// without one), so the compile goes on exactly as without the shim.
//
// Environment, read once at load and then removed from this process's
// environment (so no child of the compiler sees them, nor this library in
// its LD_PRELOAD):
//   LTOCACHE_SHIM_FD=N        descriptor to report on (made close-on-exec)
//   LTOCACHE_SHIM_PRELOAD=+V  the LD_PRELOAD to restore (V), or "-": unset
//   LTOCACHE_SHIM_DUMP=PATH   also write the module as -save-temps does
//   LTOCACHE_SHIM_CHECK=1     report what the shim binds to and do nothing
//   LTOCACHE_SHIM_ASK=1       after an `ok` report, wait for one byte on the
//                             descriptor (a socket): `s` means ltocache has
//                             put the object in place, so stop -- remove the
//                             compiler's temporary output (its interrupt
//                             handlers) and exit 0; anything else, end of
//                             file, an error or 60 s without an answer: go on
// Report (one line on the descriptor, which is then closed):
//   ok <64 hex digits> <bitcode bytes> <CPU ns spent hashing>
//   refuse <reason>
//   shim <protocol> LLVM <version> <realpath of the libLLVM defining the
//        real thinBackend>            (LTOCACHE_SHIM_CHECK)
// Anything that goes wrong (no descriptor, the real symbol not found) leaves
// the compile to the real function untouched, or reports a refusal.

#include "precise-common.h"

#include "llvm/LTO/Config.h"
#include "llvm/LTO/LTOBackend.h"
#include "llvm/Support/Signals.h"

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <string>
#include <unistd.h>

using namespace llvm;

namespace {

// Bump when what the report means changes: it is part of the shim's identity.
const char *const PROTOCOL = "ltocache-precise-shim 1";

using ThinBackendFn = decltype(&lto::thinBackend);

// Plain data only: the constructor below may run before this file's dynamic
// initialisers (a std::string set there could be reset after).
int ReportFd = -1;
bool Ask = false;
char *DumpPath = nullptr;
ThinBackendFn Real = nullptr;
std::atomic<bool> Used{false};

using ltocache_precise::writeAll;

void report(std::string Line, bool Asking = false) {
  int Fd = ReportFd;
  ReportFd = -1;
  if (Fd < 0) return;
  for (char &C : Line)
    if (C == '\n') C = ' ';
  writeAll(Fd, Line + "\n");
  if (Asking) {
    pollfd P{Fd, POLLIN, 0};
    char Answer = 0;
    // One deadline for the whole wait: a signal restarts poll() with what
    // is left of the 60 s, not with 60 s again.
    timespec Start{};
    clock_gettime(CLOCK_MONOTONIC, &Start);
    int N;
    for (;;) {
      timespec Now{};
      clock_gettime(CLOCK_MONOTONIC, &Now);
      long Spent = (Now.tv_sec - Start.tv_sec) * 1000 + (Now.tv_nsec - Start.tv_nsec) / 1000000;
      N = poll(&P, 1, Spent >= 60000 ? 0 : int(60000 - Spent));
      if (!(N < 0 && errno == EINTR)) break;
    }
    ssize_t Got = 0;
    if (N > 0) {
      do Got = read(Fd, &Answer, 1);
      while (Got < 0 && errno == EINTR);
    }
    if (Got == 1 && Answer == 's') {
      // ltocache served the object at the output path (atomically, before
      // answering): what clang would still write is the same object. Its
      // temporary output file is removed as on an interrupt, and nothing
      // else of the compile is left to do.
      sys::RunInterruptHandlers();
      _exit(0);
    }
  }
  close(Fd);
}

// Runs before main: takes this library's settings out of the environment.
__attribute__((constructor)) void init() {
  const char *Fd = getenv("LTOCACHE_SHIM_FD");
  if (Fd && *Fd) {
    char *End = nullptr;
    long N = strtol(Fd, &End, 10);
    // Only a descriptor that is open: a stale number must not make us write
    // into some file of the compiler's.
    if (End && *End == 0 && N > 2 && N < INT_MAX && fcntl(int(N), F_GETFD) >= 0) {
      ReportFd = int(N);
      fcntl(ReportFd, F_SETFD, FD_CLOEXEC);
    }
  }
  if (const char *D = getenv("LTOCACHE_SHIM_DUMP")) DumpPath = strdup(D);
  bool Check = getenv("LTOCACHE_SHIM_CHECK") != nullptr;
  Ask = getenv("LTOCACHE_SHIM_ASK") != nullptr;
  if (const char *P = getenv("LTOCACHE_SHIM_PRELOAD")) {
    if (P[0] == '+') setenv("LD_PRELOAD", P + 1, 1);
    else unsetenv("LD_PRELOAD");
  }
  for (const char *V :
       {"LTOCACHE_SHIM_FD", "LTOCACHE_SHIM_PRELOAD", "LTOCACHE_SHIM_DUMP", "LTOCACHE_SHIM_CHECK", "LTOCACHE_SHIM_ASK"})
    unsetenv(V);

  // The real function: the next definition of our own symbol's name (taken
  // from our definition, so no mangled name is spelled out here).
  Dl_info Own{};
  ThinBackendFn Mine = &lto::thinBackend;
  if (dladdr(reinterpret_cast<void *>(Mine), &Own) && Own.dli_sname) {
    void *Next = dlsym(RTLD_NEXT, Own.dli_sname);
    if (Next && Next != reinterpret_cast<void *>(Mine)) Real = reinterpret_cast<ThinBackendFn>(Next);
  }
  if (!Check) return;
  Dl_info Lib{};
  char Path[PATH_MAX];
  if (!Real) report("refuse the real thinBackend was not found");
  else if (!dladdr(reinterpret_cast<void *>(Real), &Lib) || !Lib.dli_fname || !realpath(Lib.dli_fname, Path))
    report("refuse the real thinBackend's library is unknown");
  else report(std::string("shim ") + PROTOCOL + " LLVM " + LLVM_VERSION_STRING + " " + Path);
}

// Calls the real backend with the hook chained when a report is wanted.
template <class Call> Error shimmed(const lto::Config &C, const ModuleSummaryIndex &Index, Call &&Run) {
  if (ReportFd < 0 || Used.exchange(true)) return Run(C);
  std::string Feature = ltocache_precise::unvettedIndexFeature(Index);
  if (!Feature.empty()) {
    report("refuse " + Feature);
    return Run(C);
  }
  // clang's Config is its own non-const local (runThinLTOBackend): the hook
  // is chained onto it for this call and put back after.
  lto::Config &Mutable = const_cast<lto::Config &>(C);
  lto::Config::ModuleHookFn Prev = C.PostImportModuleHook;
  bool Reached = false;
  Mutable.PostImportModuleHook = [&Reached, Prev](unsigned Task, const Module &Mod) {
    if (!Reached) {
      Reached = true;
      long long Cpu0 = ltocache_precise::cpuNs();
      ltocache_precise::ModuleDigest D = ltocache_precise::digestModule(Mod);
      std::string DumpError = DumpPath ? ltocache_precise::dumpModule(Mod, DumpPath) : "";
      if (!DumpError.empty()) report("refuse dump: " + DumpError);
      else
        report("ok " + D.Hex + " " + std::to_string(D.Bytes) + " " +
                   std::to_string(ltocache_precise::cpuNs() - Cpu0),
               Ask);
    }
    return Prev ? Prev(Task, Mod) : true;
  };
  Error E = Run(C);
  Mutable.PostImportModuleHook = Prev;
  if (!Reached) report("refuse post-import hook not reached");
  return E;
}

} // namespace

namespace llvm {
namespace lto {

#if LLVM_VERSION_MAJOR >= 23
Error thinBackend(const Config &C, unsigned Task, AddStreamFn AddStream, Module &M,
                  const ModuleSummaryIndex &CombinedIndex, const FunctionImporter::ImportMapTy &ImportList,
                  const GVSummaryMapTy &DefinedGlobals, MapVector<StringRef, BitcodeModule> *ModuleMap,
                  bool CodeGenOnly, ArrayRef<StringRef> BitcodeLibFuncs, AddStreamFn IRAddStream,
                  const std::vector<uint8_t> &CmdArgs) {
  if (!Real) return createStringError(inconvertibleErrorCode(), "ltocache shim: the real thinBackend was not found");
  return shimmed(C, CombinedIndex, [&](const Config &Conf) {
    return Real(Conf, Task, std::move(AddStream), M, CombinedIndex, ImportList, DefinedGlobals, ModuleMap,
                CodeGenOnly, BitcodeLibFuncs, std::move(IRAddStream), CmdArgs);
  });
}
#else
Error thinBackend(const Config &C, unsigned Task, AddStreamFn AddStream, Module &M,
                  const ModuleSummaryIndex &CombinedIndex, const FunctionImporter::ImportMapTy &ImportList,
                  const GVSummaryMapTy &DefinedGlobals, MapVector<StringRef, BitcodeModule> *ModuleMap,
                  const std::vector<uint8_t> &CmdArgs) {
  if (!Real) return createStringError(inconvertibleErrorCode(), "ltocache shim: the real thinBackend was not found");
  return shimmed(C, CombinedIndex, [&](const Config &Conf) {
    return Real(Conf, Task, std::move(AddStream), M, CombinedIndex, ImportList, DefinedGlobals, ModuleMap, CmdArgs);
  });
}
#endif

} // namespace lto
} // namespace llvm
