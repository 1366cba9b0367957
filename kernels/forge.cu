// forge.cu: the one translation unit the runtime compiles (NVRTC / hipRTC)
// and CI compiles with `hipcc --genco`. One op per included file.
#include "vendor.h"
#include "quant.h"
#include "matvec.cu"
#include "mmvq.cu"
#include "mmq.cu"
#include "mmf.cu"
#include "matmul.cu"
#include "norm.cu"
#include "rope.cu"
#include "attention.cu"
#include "elementwise.cu"
#include "sample.cu"
