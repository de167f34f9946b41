# The CPU addon, built by node-gyp (npm install) or shipped prebuilt.
# Built for plain x86-64: SIMD kernels pick AVX2/FMA at run time, never -march=native.
{
  "targets": [
    {
      "target_name": "memgpt_cpu",
      "sources": [
        "native/binding/addon_cpu.cc",
        "native/binding/memory.cc",
        "native/binding/memory_cpu.cc",
        "native/binding/ops.cc",
        "native/binding/ops_norm.cc",
        "native/binding/ops_linear.cc",
        "native/binding/ops_attention.cc",
        "native/binding/ops_memwrite.cc",
        "native/binding/ops_classifier.cc",
        "native/binding/ops_optim.cc",
        "native/common/threadpool.cpp",
        "native/cpu/elementwise.cpp",
        "native/cpu/reduce.cpp",
        "native/cpu/matmul.cpp",
        "native/cpu/norm.cpp",
        "native/cpu/linear.cpp",
        "native/cpu/attention.cpp",
        "native/cpu/memwrite.cpp",
        "native/cpu/classifier.cpp",
        "native/cpu/optim.cpp",
        "native/cpu/probe.cpp"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "ldflags": ["-pthread"]
    }
  ]
}
