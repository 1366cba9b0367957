#!/usr/bin/env python3
"""Compile the kernel units (examples/kernel_units) with NVRTC for NVIDIA
targets, on a machine with no GPU: libnvrtc from the nvidia-cuda-nvrtc
wheel (pip), the options the CUDA backend passes. Checks the code only
NVIDIA compiles (the tensor-core kernels behind HAS_MMA_F16, cp.async).

usage: nvrtc_check.py UNITS_DIR [sm_80 sm_90 ...] [-- extra NVRTC options]
"""
import ctypes, glob, os, sys

def libnvrtc():
    # nvidia-cuda-nvrtc-cu12 puts it in nvidia/cuda_nvrtc/lib, the CUDA 13
    # wheel (nvidia-cuda-nvrtc 13.x) in nvidia/cu13/lib
    import nvidia
    for root in nvidia.__path__:
        for d in ("cuda_nvrtc/lib", "cu13/lib"):
            found = sorted(glob.glob(os.path.join(root, d, "libnvrtc.so.*")))
            if found:
                return ctypes.CDLL(found[0])
    raise SystemExit("no libnvrtc.so in the nvidia wheels: pip install nvidia-cuda-nvrtc")

def main():
    args = sys.argv[1:]
    extra = []
    if "--" in args:
        i = args.index("--")
        args, extra = args[:i], args[i + 1:]
    if not args:
        print(__doc__)
        return 2
    units = sorted(glob.glob(os.path.join(args[0], "*.cu")))
    archs = args[1:] or ["sm_80", "sm_90"]
    nv = libnvrtc()
    bad = 0
    for arch in archs:
        for u in units:
            src = open(u, "rb").read()
            prog = ctypes.c_void_p()
            assert nv.nvrtcCreateProgram(ctypes.byref(prog), src, os.path.basename(u).encode(), 0, None, None) == 0
            opts = [f"--gpu-architecture={arch}", "-std=c++17", "-lineinfo"] + extra
            arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
            r = nv.nvrtcCompileProgram(prog, len(opts), arr)
            n = ctypes.c_size_t()
            nv.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
            log = ctypes.create_string_buffer(n.value)
            nv.nvrtcGetProgramLog(prog, log)
            text = log.value.decode(errors="replace").strip()
            if r != 0:
                bad += 1
                print(f"FAIL {arch} {os.path.basename(u)}:\n{text}")
            else:
                print(f"ok   {arch} {os.path.basename(u)}" + (f"\n{text}" if text else ""))
            nv.nvrtcDestroyProgram(ctypes.byref(prog))
    print(f"{bad} of {len(units) * len(archs)} units failed")
    return 1 if bad else 0

if __name__ == "__main__":
    sys.exit(main())
