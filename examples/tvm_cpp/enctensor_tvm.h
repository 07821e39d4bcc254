// Decrypting enctensor files straight into TVM tensors, through the enctensor C ABI.
//
// Link libenctensor_tvm.so (built from enctensor_tvm.cc) into a TVM runtime host, or load it
// (dlopen, ctypes.CDLL): it registers the global function "enctensor.load_params".
#ifndef ENCTENSOR_TVM_H_
#define ENCTENSOR_TVM_H_

#include <enctensor.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/string.h>

#include <string>

namespace enctensor_tvm {

// Parameter name -> tensor, as tvm.runtime.load_param_dict gives.
using ParamMap = tvm::ffi::Map<tvm::ffi::String, tvm::ffi::Tensor>;

// Opens `path` with `credential` (and `options`, or the defaults if NULL), allocates one CPU
// tensor per stored tensor with the TVM runtime (64-byte aligned) and decrypts every tensor
// straight into them, all chunks in parallel on the reader's threads. Throws tvm::ffi::Error:
// ValueError for a malformed, tampered or wrongly keyed file (the message starts with the
// enctensor status, e.g. "ENCT_ERR_WRONG_KEY"), RuntimeError for an I/O error.
//
// The tensors are tvm::ffi::Tensor, which tvm::runtime::Tensor derives from without adding
// state: a host with TVM's full headers passes them wherever a tvm::runtime::Tensor goes.
ParamMap LoadParams(const std::string& path, const enct_credential* credential,
                    const enct_open_options* options);

// The DLPack type of a format dtype name ("F32" -> float32, "BF16" -> bfloat16, ...).
DLDataType DataType(const std::string& dtype);

}  // namespace enctensor_tvm

#endif  // ENCTENSOR_TVM_H_
