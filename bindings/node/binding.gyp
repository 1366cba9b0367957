{
  "targets": [
    {
      "target_name": "rocmforge",
      "sources": ["src/addon.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "<!(node find-lib.js include)"],
      "libraries": ["-L<!(node find-lib.js libdir)", "-lrocmforge", "-Wl,-rpath,<!(node find-lib.js libdir)"],
      "cflags_cc": ["-std=c++17", "-fexceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"]
    }
  ]
}
