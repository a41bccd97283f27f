// What the helper (ltocache-precise.cpp) and the shim (ltocache-precise-shim.cpp)
// share: the one definition of "the post-import module's digest" -- BLAKE3 of
// the module's bitcode written with its use-list order -- of the dump written
// as -save-temps writes X.3.import.bc, and of the index features whose use
// after the post-import hook is not vetted. Both include this file, so a
// second key computed by either is the same key (tests/precise_shim.rs holds
// them equal on every fixture module).

#ifndef LTOCACHE_PRECISE_COMMON_H
#define LTOCACHE_PRECISE_COMMON_H

#include <sys/socket.h>
#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/SmallVector.h"
#include "llvm/Bitcode/BitcodeWriter.h"
#include "llvm/Config/llvm-config.h"
#include "llvm/IR/Module.h"
#include "llvm/IR/ModuleSummaryIndex.h"
#include "llvm/Support/BLAKE3.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/raw_ostream.h"

#include <cerrno>
#include <string>
#include <sys/resource.h>
#include <unistd.h>

namespace ltocache_precise {

inline std::string hexOf(llvm::ArrayRef<uint8_t> Bytes) {
  static const char *Digits = "0123456789abcdef";
  std::string S;
  for (uint8_t B : Bytes) {
    S.push_back(Digits[B >> 4]);
    S.push_back(Digits[B & 15]);
  }
  return S;
}

struct ModuleDigest {
  std::string Hex;
  size_t Bytes = 0;
};

// The module's bitcode written with its use-list order (the order in memory
// is what the optimiser sees, and it is not in the bitcode otherwise), hashed.
inline ModuleDigest digestModule(const llvm::Module &M) {
  llvm::SmallVector<char, 0> Bitcode;
  {
    llvm::raw_svector_ostream OS(Bitcode);
    llvm::WriteBitcodeToFile(M, OS, /*ShouldPreserveUseListOrder=*/true);
  }
  llvm::BLAKE3 H;
  H.update(llvm::ArrayRef<uint8_t>(reinterpret_cast<const uint8_t *>(Bitcode.data()), Bitcode.size()));
  auto Result = H.final();
  return ModuleDigest{hexOf(Result), Bitcode.size()};
}

// Writes the module as lto::Config::addSaveTemps writes X.3.import.bc;
// returns an error message, or "".
inline std::string dumpModule(const llvm::Module &M, const std::string &Path) {
  std::error_code EC;
  llvm::raw_fd_ostream Out(Path, EC, llvm::sys::fs::OF_None);
  if (EC) return EC.message();
  llvm::WriteBitcodeToFile(M, Out, /*ShouldPreserveUseListOrder=*/false);
  return "";
}

// Index features whose use after the post-import hook (devirtualisation and
// CFI resolutions read by WholeProgramDevirt and LowerTypeTests, MemProf
// context disambiguation, stack-safety parameter accesses) is not vetted.
inline std::string unvettedIndexFeature(const llvm::ModuleSummaryIndex &Index) {
  using namespace llvm;
  if (!Index.typeIds().empty()) return "index has type-id resolutions (WPD/CFI)";
  if (!Index.typeIdCompatibleVtableMap().empty()) return "index has vtable type-id info";
  if (!Index.cfiFunctionDefs().empty() || !Index.cfiFunctionDecls().empty())
    return "index has CFI functions";
  if (!Index.stackIds().empty()) return "index has MemProf stack ids";
  for (const auto &Entry : Index) {
#if LLVM_VERSION_MAJOR >= 23
    for (const auto &S : Entry.second.getSummaryList()) {
#else
    for (const auto &S : Entry.second.SummaryList) {
#endif
      if (auto *FS = dyn_cast<FunctionSummary>(S.get())) {
        if (!FS->type_tests().empty() || !FS->type_test_assume_vcalls().empty() ||
            !FS->type_checked_load_vcalls().empty() ||
            !FS->type_test_assume_const_vcalls().empty() ||
            !FS->type_checked_load_const_vcalls().empty())
          return "index has type tests";
        if (!FS->paramAccesses().empty()) return "index has parameter accesses";
        if (!FS->callsites().empty() || !FS->allocs().empty())
          return "index has MemProf records";
      } else if (auto *VS = dyn_cast<GlobalVarSummary>(S.get())) {
        if (!VS->vTableFuncs().empty()) return "index has vtable functions";
      }
    }
  }
  return "";
}

inline long long cpuNs() {
  rusage U{};
  getrusage(RUSAGE_SELF, &U);
  return (U.ru_utime.tv_sec + U.ru_stime.tv_sec) * 1000000000LL +
         (U.ru_utime.tv_usec + U.ru_stime.tv_usec) * 1000LL;
}

inline void writeAll(int Fd, const std::string &S) {
  size_t Off = 0;
  while (Off < S.size()) {
    // send() with MSG_NOSIGNAL on a socket: if ltocache's end is gone the
    // compile must go on, not die of SIGPIPE; write() for anything else.
    ssize_t N = send(Fd, S.data() + Off, S.size() - Off, MSG_NOSIGNAL);
    if (N < 0 && errno == ENOTSOCK) N = write(Fd, S.data() + Off, S.size() - Off);
    if (N < 0 && errno == EINTR) continue;
    if (N <= 0) return;
    Off += N;
  }
}

} // namespace ltocache_precise

#endif
