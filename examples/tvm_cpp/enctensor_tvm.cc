// See enctensor_tvm.h.
#include "enctensor_tvm.h"

#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/optional.h>
#include <tvm/ffi/reflection/registry.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

namespace enctensor_tvm {
namespace {

using tvm::ffi::Bytes;
using tvm::ffi::Function;
using tvm::ffi::Optional;
using tvm::ffi::Shape;
using tvm::ffi::String;
using tvm::ffi::Tensor;

struct CredentialFree {
  void operator()(enct_credential* c) const { enct_credential_free(c); }
};
struct ReaderClose {
  void operator()(enct_reader* r) const { enct_close(r); }
};
using CredentialPtr = std::unique_ptr<enct_credential, CredentialFree>;
using ReaderPtr = std::unique_ptr<enct_reader, ReaderClose>;

// Throws the TVM error that matches an enctensor status (enctensor's own Python classes are
// ValueErrors too; a missing name is a KeyError; the rest are runtime failures).
void Check(enct_status status) {
  if (status == ENCT_OK) return;
  std::string message = std::string(enct_status_name(status)) + ": " + enct_last_error();
  switch (status) {
    case ENCT_ERR_FORMAT:
    case ENCT_ERR_WRONG_KEY:
    case ENCT_ERR_INTEGRITY:
    case ENCT_ERR_SIGNATURE:
    case ENCT_ERR_INVALID_ARGUMENT:
      TVM_FFI_THROW(ValueError) << message;
    case ENCT_ERR_NOT_FOUND:
      TVM_FFI_THROW(KeyError) << message;
    default:
      TVM_FFI_THROW(RuntimeError) << message;
  }
}

// "enctensor.load_params"(path, kind, secret, verify_key): kind is "key" (32 raw bytes),
// "x25519" (a 32-byte private key) or "passphrase" (UTF-8); verify_key is None or a 32-byte
// Ed25519 public key that the file's publisher signature must verify under.
ParamMap LoadParamsPacked(const String& path, const String& kind, const Bytes& secret,
                          const Optional<Bytes>& verify_key) {
  enct_credential* made = nullptr;
  const auto* bytes = reinterpret_cast<const uint8_t*>(secret.data());
  if (kind == "key") {
    Check(enct_credential_key(bytes, secret.size(), &made));
  } else if (kind == "x25519") {
    Check(enct_credential_x25519(bytes, secret.size(), &made));
  } else if (kind == "passphrase") {
    Check(enct_credential_passphrase(secret.data(), secret.size(), &made));
  } else {
    TVM_FFI_THROW(ValueError) << "enctensor.load_params: kind must be \"key\", \"x25519\" or "
                                 "\"passphrase\", got \""
                              << kind << "\"";
  }
  CredentialPtr credential(made);
  enct_open_options options{};
  if (verify_key.has_value()) {
    options.verify_key = reinterpret_cast<const uint8_t*>(verify_key.value().data());
    options.verify_key_len = verify_key.value().size();
  }
  return LoadParams(std::string(path), credential.get(), &options);
}

}  // namespace

DLDataType DataType(const std::string& dtype) {
  struct Entry {
    const char* name;
    DLDataType type;
  };
  static const Entry kTypes[] = {
      {"BOOL", {kDLBool, 8, 1}},          {"U8", {kDLUInt, 8, 1}},
      {"I8", {kDLInt, 8, 1}},             {"F8_E4M3", {kDLFloat8_e4m3fn, 8, 1}},
      {"F8_E5M2", {kDLFloat8_e5m2, 8, 1}}, {"I16", {kDLInt, 16, 1}},
      {"U16", {kDLUInt, 16, 1}},          {"F16", {kDLFloat, 16, 1}},
      {"BF16", {kDLBfloat, 16, 1}},       {"I32", {kDLInt, 32, 1}},
      {"U32", {kDLUInt, 32, 1}},          {"F32", {kDLFloat, 32, 1}},
      {"I64", {kDLInt, 64, 1}},           {"U64", {kDLUInt, 64, 1}},
      {"F64", {kDLFloat, 64, 1}},
  };
  for (const Entry& e : kTypes) {
    if (dtype == e.name) return e.type;
  }
  TVM_FFI_THROW(ValueError) << "enctensor dtype " << dtype << " has no DLPack equivalent";
}

ParamMap LoadParams(const std::string& path, const enct_credential* credential,
                    const enct_open_options* options) {
  enct_reader* opened = nullptr;
  Check(enct_open_path(path.c_str(), credential, options, &opened));
  ReaderPtr reader(opened);
  size_t count = 0;
  Check(enct_tensor_count(reader.get(), &count));

  // TVM's own allocator (what tvm.runtime.empty uses): the tensors belong to the runtime,
  // whichever library made them.
  static const Function alloc = Function::GetGlobalRequired("runtime.TVMTensorAllocWithScope");
  const DLDevice cpu{kDLCPU, 0};
  std::vector<Tensor> tensors;
  std::vector<String> names;
  std::vector<size_t> indices(count), lens(count);
  std::vector<void*> dsts(count);
  for (size_t i = 0; i < count; i++) {
    enct_tensor_info info;
    Check(enct_describe_tensor(reader.get(), i, &info));
    std::vector<int64_t> dims;
    for (size_t d = 0; d < info.ndim; d++) {
      if (info.shape[d] > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        TVM_FFI_THROW(ValueError) << path << ": tensor " << std::string(info.name, info.name_len)
                                  << " has a dimension TVM cannot represent";
      }
      dims.push_back(static_cast<int64_t>(info.shape[d]));
    }
    Tensor t = alloc(Shape(dims), DataType(info.dtype), cpu, Optional<String>()).cast<Tensor>();
    indices[i] = i;
    lens[i] = static_cast<size_t>(info.nbytes);
    dsts[i] = info.nbytes ? t.data_ptr() : nullptr;
    names.emplace_back(std::string(info.name, info.name_len));
    tensors.push_back(std::move(t));
  }
  // One call: every chunk of every tensor decrypted and verified in parallel, in place. On a
  // failure every tensor is zeroed and nothing is returned.
  Check(enct_read_tensors(reader.get(), indices.data(), dsts.data(), lens.data(), count));
  ParamMap params;
  for (size_t i = 0; i < count; i++) params.Set(names[i], tensors[i]);
  return params;
}

TVM_FFI_STATIC_INIT_BLOCK() {
  tvm::ffi::reflection::GlobalDef().def("enctensor.load_params", LoadParamsPacked);
}

}  // namespace enctensor_tvm
