// ltocache-precise: the post-import module of a distributed ThinLTO backend,
// computed with the LLVM the compiler itself loads (see
// docs/precise-invalidation.md).
//
// It runs LLVM's own `lto::thinBackend` -- the function clang's backend calls
// -- with the configuration ltocache read from clang's cc1 command line, and
// stops it in the post-import hook: everything up to that point is LLVM's own
// code, so the module there is the module clang optimises. It answers with
// the BLAKE3 of that module's bitcode written with its use-list order (the
// order in memory is what the optimiser sees), or with a refusal when the job
// uses something whose effect after the hook has not been vetted.
//
// Modes:
//   --version            one line: protocol version, LLVM version, libLLVM path
//   --once               one request on stdin, one answer on stdout
//   --serve SOCK IDLE    answer requests on a Unix socket, one at a time,
//                        until IDLE seconds pass without one
//
// A request is lines of `name<TAB>value`, ended by a line `end`:
//   cwd, input, index, triple, reloc, cmodel (optional), cpu, feature
//   (repeated), olevel, mllvm (repeated), dump (optional: also write the
//   module as -save-temps writes X.3.import.bc, without use-list order).
// An answer is one line: `ok <64 hex digits> <bitcode bytes> <CPU ns spent>`
// or `refuse <reason>`.

#include "precise-common.h"

#include "llvm/ADT/SmallVector.h"
#include "llvm/Bitcode/BitcodeReader.h"
#include "llvm/Bitcode/BitcodeWriter.h"
#include "llvm/Config/llvm-config.h"
#include "llvm/IR/DiagnosticInfo.h"
#include "llvm/IR/DiagnosticPrinter.h"
#include "llvm/IR/LLVMContext.h"
#include "llvm/IR/Module.h"
#include "llvm/IR/ModuleSummaryIndex.h"
#include "llvm/LTO/Config.h"
#include "llvm/LTO/LTOBackend.h"
#include "llvm/MC/TargetRegistry.h"
#include "llvm/Support/BLAKE3.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Support/raw_ostream.h"
#include "llvm/Transforms/IPO/FunctionImport.h"

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <dlfcn.h>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <string>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <vector>

using namespace llvm;

// Bump when what the answer means changes: it is part of the helper's
// identity in the key (with the binary's own digest).
static const char *const PROTOCOL = "ltocache-precise 1";

// -mllvm options whose effect on the steps before the post-import hook was
// tested (tests/precise.rs): the backend's own options reach this process the
// way clang's `setCommandLineOpts` hands them to LLVM. ltocache refuses
// anything else before asking; this list is checked again here.
static const char *const VETTED_MLLVM[] = {
    "-use-source-filename-for-promoted-locals",
    "-import-instr-limit",
    "-inline-threshold",
};

namespace {

struct Request {
  std::string cwd, input, index, triple, reloc, cmodel, cpu, olevel, dump;
  std::vector<std::string> features, mllvm;
};

struct Refusal {
  std::string why;
};

// Records every diagnostic LLVM reports while importing: a warning there
// (conflicting module flags, mismatched triples of an imported module) is
// something clang prints and the cached stderr may not have, so any
// diagnostic at all makes the job refuse.
struct Recorder : DiagnosticHandler {
  std::string *First;
  explicit Recorder(std::string *F) : First(F) {}
  bool handleDiagnostics(const DiagnosticInfo &DI) override {
    if (DI.getSeverity() == DS_Remark || DI.getSeverity() == DS_Note)
      return true;
    if (First->empty()) {
      raw_string_ostream OS(*First);
      DiagnosticPrinterRawOStream DP(OS);
      DI.print(DP);
    }
    return true;
  }
};

bool parseReloc(const std::string &S, Reloc::Model &M) {
  if (S == "static") M = Reloc::Static;
  else if (S == "pic") M = Reloc::PIC_;
  else if (S == "dynamic-no-pic") M = Reloc::DynamicNoPIC;
  else if (S == "ropi") M = Reloc::ROPI;
  else if (S == "rwpi") M = Reloc::RWPI;
  else if (S == "ropi-rwpi") M = Reloc::ROPI_RWPI;
  else return false;
  return true;
}

bool parseCodeModel(const std::string &S, std::optional<CodeModel::Model> &M) {
  // clang's getCodeModel: "default" leaves it unset.
  if (S.empty() || S == "default") M = std::nullopt;
  else if (S == "tiny") M = CodeModel::Tiny;
  else if (S == "small") M = CodeModel::Small;
  else if (S == "kernel") M = CodeModel::Kernel;
  else if (S == "medium") M = CodeModel::Medium;
  else if (S == "large") M = CodeModel::Large;
  else return false;
  return true;
}

bool vettedOption(const std::string &Opt) {
  std::string Name = Opt.substr(0, Opt.find('='));
  for (const char *V : VETTED_MLLVM)
    if (Name == V) return true;
  return false;
}

// Sets the backend's -mllvm options in this process, after putting every
// option back to its default (a server answers jobs with different ones).
void applyOptions(const std::vector<std::string> &Opts) {
  cl::ResetAllOptionOccurrences();
  std::vector<const char *> Argv{"ltocache-precise"};
  for (const auto &O : Opts) Argv.push_back(O.c_str());
  std::string Err;
  raw_string_ostream ES(Err);
  if (!cl::ParseCommandLineOptions(Argv.size(), Argv.data(), "", &ES))
    throw Refusal{"cannot parse -mllvm options: " + Err};
}

std::string answer(const Request &R) {
  if (R.input.empty() || R.index.empty() || R.triple.empty() || R.reloc.empty() ||
      R.olevel.empty())
    throw Refusal{"incomplete request"};
  if (!R.cwd.empty() && chdir(R.cwd.c_str()) != 0)
    throw Refusal{"cannot enter " + R.cwd};
  for (const auto &O : R.mllvm)
    if (!vettedOption(O)) throw Refusal{"-mllvm " + O + " is not vetted"};
  applyOptions(R.mllvm);

  lto::Config Conf;
  Reloc::Model RM;
  if (!parseReloc(R.reloc, RM)) throw Refusal{"relocation model " + R.reloc};
  Conf.RelocModel = RM;
  if (!parseCodeModel(R.cmodel, Conf.CodeModel)) throw Refusal{"code model " + R.cmodel};
  Conf.CPU = R.cpu;
  Conf.MAttrs = R.features;
  unsigned OL = R.olevel == "0" ? 0 : R.olevel == "1" ? 1 : R.olevel == "2" ? 2 : R.olevel == "3" ? 3 : 99;
  // clang maps -Os/-Oz to level 2; anything else is not what we were told.
  if (R.olevel == "s" || R.olevel == "z") OL = 2;
  if (OL == 99) throw Refusal{"optimisation level " + R.olevel};
  Conf.OptLevel = OL;
  Conf.CGOptLevel = OL == 0 ? CodeGenOptLevel::None
                  : OL == 1 ? CodeGenOptLevel::Less
                  : OL == 2 ? CodeGenOptLevel::Default
                            : CodeGenOptLevel::Aggressive;

  // What clang's EmitBackendOutput does with the index: an empty file or a
  // skip flag means no ThinLTO backend runs at all (clang writes an empty
  // object); those jobs keep the first key only.
  auto IndexOrErr = getModuleSummaryIndexForFile(R.index, /*IgnoreEmptyThinLTOIndexFile=*/true);
  if (!IndexOrErr) throw Refusal{"index: " + toString(IndexOrErr.takeError())};
  std::unique_ptr<ModuleSummaryIndex> Index = std::move(*IndexOrErr);
  if (!Index) throw Refusal{"empty index"};
  if (Index->skipModuleByDistributedBackend()) throw Refusal{"index skips the module"};
  std::string Feature = ltocache_precise::unvettedIndexFeature(*Index);
  if (!Feature.empty()) throw Refusal{Feature};

  LLVMContext Ctx;
  // clang's loadModule for a ThinLTO backend.
  Ctx.enableDebugTypeODRUniquing();
  std::string Diag;
  Ctx.setDiagnosticHandler(std::make_unique<Recorder>(&Diag));

  auto BufOrErr = MemoryBuffer::getFile(R.input);
  if (!BufOrErr) throw Refusal{"cannot read " + R.input};
  auto BMsOrErr = getBitcodeModuleList((*BufOrErr)->getMemBufferRef());
  if (!BMsOrErr) throw Refusal{"input: " + toString(BMsOrErr.takeError())};
  BitcodeModule *BM = lto::findThinLTOModule(*BMsOrErr);
  if (!BM) throw Refusal{"input has no ThinLTO module"};
  auto MOrErr = BM->parseModule(Ctx);
  if (!MOrErr) throw Refusal{"input: " + toString(MOrErr.takeError())};
  std::unique_ptr<Module> M = std::move(*MOrErr);

  // clang's CodeGenAction overrides a module triple that differs from the
  // target's (with a warning); so do we, before anything looks at it.
#if LLVM_VERSION_MAJOR >= 23
  if (M->getTargetTriple().str() != R.triple) M->setTargetTriple(Triple(R.triple));
#else
  if (M->getTargetTriple() != R.triple) M->setTargetTriple(R.triple);
#endif

#if LLVM_VERSION_MAJOR >= 23
  // The import list refers to its entries through a table it does not own.
  FunctionImporter::ImportIDTable ImportIDs;
  FunctionImporter::ImportMapTy ImportList(ImportIDs);
#else
  FunctionImporter::ImportMapTy ImportList;
#endif
  if (!lto::initImportList(*M, *Index, ImportList)) throw Refusal{"import list"};
  DenseMap<StringRef, GVSummaryMapTy> Defined;
  Index->collectDefinedGVSummariesPerModule(Defined);

  bool Reached = false;
  std::string Digest;
  size_t Size = 0;
  std::string DumpError;
  Conf.PostImportModuleHook = [&](unsigned, const Module &Mod) {
    Reached = true;
    ltocache_precise::ModuleDigest D = ltocache_precise::digestModule(Mod);
    Digest = D.Hex;
    Size = D.Bytes;
    if (!R.dump.empty()) DumpError = ltocache_precise::dumpModule(Mod, R.dump);
    return false; // stop: optimisation and code generation are clang's
  };
  auto AddStream = [&](size_t, const Twine &) -> Expected<std::unique_ptr<CachedFileStream>> {
    return createStringError(inconvertibleErrorCode(), "no output past the post-import hook");
  };
#if LLVM_VERSION_MAJOR >= 23
  // CodeGenOnly and the bitcode library functions only concern the steps
  // after the hook (the optimiser's pipeline), which never run here.
  Error E = lto::thinBackend(Conf, -1, AddStream, *M, *Index, ImportList,
                             Defined[M->getModuleIdentifier()], /*ModuleMap=*/nullptr,
                             /*CodeGenOnly=*/false, /*BitcodeLibFuncs=*/{});
#else
  Error E = lto::thinBackend(Conf, -1, AddStream, *M, *Index, ImportList,
                             Defined[M->getModuleIdentifier()], /*ModuleMap=*/nullptr);
#endif
  if (E) throw Refusal{"thinBackend: " + toString(std::move(E))};
  if (!Reached) throw Refusal{"post-import hook not reached"};
  if (!Diag.empty()) throw Refusal{"LLVM diagnostic: " + Diag};
  if (!DumpError.empty()) throw Refusal{"dump: " + DumpError};
  return "ok " + Digest + " " + std::to_string(Size);
}

// Parses a request from its text; false when the text is not one.
bool parseRequest(const std::string &Text, Request &R) {
  size_t Pos = 0;
  while (Pos < Text.size()) {
    size_t End = Text.find('\n', Pos);
    if (End == std::string::npos) return false;
    std::string Line = Text.substr(Pos, End - Pos);
    Pos = End + 1;
    if (Line == "end") return true;
    size_t Tab = Line.find('\t');
    if (Tab == std::string::npos) return false;
    std::string K = Line.substr(0, Tab), V = Line.substr(Tab + 1);
    if (K == "cwd") R.cwd = V;
    else if (K == "input") R.input = V;
    else if (K == "index") R.index = V;
    else if (K == "triple") R.triple = V;
    else if (K == "reloc") R.reloc = V;
    else if (K == "cmodel") R.cmodel = V;
    else if (K == "cpu") R.cpu = V;
    else if (K == "feature") R.features.push_back(V);
    else if (K == "olevel") R.olevel = V;
    else if (K == "mllvm") R.mllvm.push_back(V);
    else if (K == "dump") R.dump = V;
    else return false; // an unknown field: the caller knows something we do not
  }
  return false;
}

std::string handleText(const std::string &Text) {
  Request R;
  if (!parseRequest(Text, R)) return "refuse malformed request";
  long long Cpu0 = ltocache_precise::cpuNs();
  try {
    std::string A = answer(R);
    return A + " " + std::to_string(ltocache_precise::cpuNs() - Cpu0);
  } catch (const Refusal &Ref) {
    std::string W = Ref.why;
    for (char &C : W)
      if (C == '\n') C = ' ';
    return "refuse " + W;
  }
}

bool readRequest(int Fd, std::string &Text) {
  char Buf[4096];
  while (Text.find("\nend\n") == std::string::npos && Text.rfind("end\n", 0) != 0) {
    ssize_t N = read(Fd, Buf, sizeof Buf);
    if (N < 0 && errno == EINTR) continue;
    if (N <= 0) return false;
    Text.append(Buf, N);
    if (Text.size() > (1 << 20)) return false;
  }
  return true;
}

using ltocache_precise::writeAll;

int serve(const char *SockPath, int IdleSeconds) {
  // One server per socket: the lock is held for the server's whole life.
  std::string LockPath = std::string(SockPath) + ".lock";
  int Lock = open(LockPath.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (Lock < 0 || flock(Lock, LOCK_EX | LOCK_NB) != 0) return 0;
  unlink(SockPath);
  int S = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un Addr{};
  Addr.sun_family = AF_UNIX;
  if (strlen(SockPath) >= sizeof Addr.sun_path) return 1;
  strcpy(Addr.sun_path, SockPath);
  // Only this user may connect: the socket is created private.
  mode_t Old = umask(077);
  int B = bind(S, reinterpret_cast<sockaddr *>(&Addr), sizeof Addr);
  umask(Old);
  if (B != 0 || listen(S, 64) != 0) return 1;
  for (;;) {
    pollfd P{S, POLLIN, 0};
    int N = poll(&P, 1, IdleSeconds * 1000);
    if (N == 0) break; // idle: the build is over
    if (N < 0) {
      if (errno == EINTR) continue;
      break;
    }
    int C = accept4(S, nullptr, nullptr, SOCK_CLOEXEC);
    if (C < 0) continue;
    timeval TV{10, 0};
    setsockopt(C, SOL_SOCKET, SO_RCVTIMEO, &TV, sizeof TV);
    setsockopt(C, SOL_SOCKET, SO_SNDTIMEO, &TV, sizeof TV);
    std::string Text;
    if (readRequest(C, Text)) writeAll(C, handleText(Text) + "\n");
    close(C);
  }
  // Unlink while still holding the lock: a new server cannot have bound yet.
  unlink(SockPath);
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  InitializeAllTargetInfos();
  InitializeAllTargets();
  InitializeAllTargetMCs();
  // Module-level inline asm is parsed for its symbols when the module's
  // symbol table is built: clang has every asm parser registered too.
  InitializeAllAsmParsers();
  InitializeAllAsmPrinters();
  if (argc == 2 && !strcmp(argv[1], "--version")) {
    // The libLLVM file this process mapped: ltocache compares it with the
    // one the compiler maps, so a helper built for another LLVM is never used.
    Dl_info Info{};
    char Real[PATH_MAX];
    const char *Lib = "?";
    if (dladdr(reinterpret_cast<void *>(&cl::ResetAllOptionOccurrences), &Info) && Info.dli_fname &&
        realpath(Info.dli_fname, Real))
      Lib = Real;
    printf("%s LLVM %s %s\n", PROTOCOL, LLVM_VERSION_STRING, Lib);
    return 0;
  }
  if (argc == 2 && !strcmp(argv[1], "--once")) {
    std::string Text;
    if (!readRequest(0, Text)) {
      printf("refuse malformed request\n");
      return 0;
    }
    writeAll(1, handleText(Text) + "\n");
    return 0;
  }
  if (argc == 4 && !strcmp(argv[1], "--serve"))
    return serve(argv[2], atoi(argv[3]) > 0 ? atoi(argv[3]) : 30);
  fprintf(stderr, "usage: %s --version | --once | --serve SOCKET IDLE_SECONDS\n", argv[0]);
  return 2;
}
