// Which backend's kernels a binding file calls: the CUDA addon is compiled with MG_BACKEND_CUDA
// (mg::cuda), the CPU addon without (mg::cpu). Both declare the same op set (native/common/*.inc).
#pragma once

#ifdef MG_BACKEND_CUDA
#include "../cuda/kernels.h"
namespace K = mg::cuda;
#else
#include "../cpu/kernels.h"
namespace K = mg::cpu;
#endif
