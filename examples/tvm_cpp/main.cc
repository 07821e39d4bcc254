// A TVM runtime host without Python: loads a Relax module exported as a shared library,
// decrypts its parameters (and its inputs) from enctensor files straight into TVM tensors with
// the registered global function "enctensor.load_params" (libenctensor_tvm.so, over the
// enctensor C ABI), runs "main" on the Relax VM on the CPU and prints the output.
//
//   tvm_cpp_example <module.so> <params.enct> <inputs.enct> <key file>
//
// Each parameter of "main" is looked up by name in the parameters, then in the inputs. The
// key file holds the 32-byte key as 64 hex digits (`enctensor keygen`) or as 32 raw bytes.
// Output: a line "shape d0 d1 ...", then one float32 value per line ("%.9g": exact).
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/optional.h>
#include <tvm/ffi/string.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using tvm::ffi::Any;
using tvm::ffi::AnyView;
using tvm::ffi::Bytes;
using tvm::ffi::Function;
using tvm::ffi::Map;
using tvm::ffi::Module;
using tvm::ffi::Optional;
using tvm::ffi::String;
using tvm::ffi::Tensor;
using ParamMap = Map<String, Tensor>;

// Overwrites a secret in a way the compiler cannot drop.
void Wipe(std::string& s) {
  volatile char* p = s.data();
  for (size_t i = 0; i < s.size(); i++) p[i] = 0;
}

std::string ReadKeyFile(const char* path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(std::string("cannot read the key file ") + path);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.size() == 32) return data;
  std::string hex;
  for (char c : data) {
    if (!std::isspace(static_cast<unsigned char>(c))) hex.push_back(c);
  }
  Wipe(data);
  std::string key;
  for (size_t i = 0; hex.size() == 64 && i < 64; i += 2) {
    key.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  Wipe(hex);
  if (key.size() != 32) {
    throw std::runtime_error("the key file must hold 64 hex digits or 32 raw bytes");
  }
  return key;
}

Function Required(const Module& mod, const char* name) {
  Optional<Function> f = mod->GetFunction(name);
  if (!f.has_value()) throw std::runtime_error(std::string("the module has no function ") + name);
  return f.value();
}

int Run(const char* module_path, const char* params_path, const char* inputs_path,
        const char* key_path) {
  std::string key = ReadKeyFile(key_path);
  Function load = Function::GetGlobalRequired("enctensor.load_params");
  ParamMap params = load(params_path, "key", Bytes(key), Optional<Bytes>()).cast<ParamMap>();
  ParamMap inputs = load(inputs_path, "key", Bytes(key), Optional<Bytes>()).cast<ParamMap>();
  Wipe(key);

  // An absolute path: dlopen looks a bare file name up in the library path, not here.
  Module lib = Module::LoadFromFile(std::filesystem::absolute(module_path).string());
  Module vm = Required(lib, "vm_load_executable")().cast<Module>();
  // One device, the CPU (DLPack device type 1, id 0), with the pooled allocator (2): what
  // relax.VirtualMachine(ex, tvm.cpu()) sets up.
  Required(vm, "vm_initialization")(static_cast<int>(kDLCPU), 0, 2);
  int64_t arity = Required(vm, "get_function_arity")("main").cast<int64_t>();
  Function param_name = Required(vm, "get_function_param_name");
  std::vector<Any> args;
  for (int64_t i = 0; i < arity; i++) {
    String name = param_name("main", i).cast<String>();
    if (auto p = params.Get(name)) {
      args.emplace_back(p.value());
    } else if (auto x = inputs.Get(name)) {
      args.emplace_back(x.value());
    } else {
      throw std::runtime_error("no tensor for parameter " + std::string(name) + " of main");
    }
  }
  std::vector<AnyView> views(args.begin(), args.end());
  Any result;
  Required(vm, "main").CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);

  Tensor out = result.cast<Tensor>();
  DLDataType t = out.dtype();
  if (t.code != kDLFloat || t.bits != 32 || t.lanes != 1 || out.device().device_type != kDLCPU) {
    throw std::runtime_error("this example prints float32 CPU outputs only");
  }
  std::printf("shape");
  int64_t n = 1;
  for (int64_t d : out.shape()) {
    std::printf(" %lld", static_cast<long long>(d));
    n *= d;
  }
  std::printf("\n");
  const float* values = static_cast<const float*>(out.data_ptr());
  for (int64_t i = 0; i < n; i++) std::printf("%.9g\n", values[i]);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: " << argv[0] << " <module.so> <params.enct> <inputs.enct> <key file>\n";
    return 2;
  }
  try {
    return Run(argv[1], argv[2], argv[3], argv[4]);
  } catch (const tvm::ffi::Error& e) {
    std::cerr << "error: " << e.kind() << ": " << e.message() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
  }
  return 1;
}
