// Where librocmforge's header and library are, for binding.gyp:
//   node find-lib.js include|libdir
// 1. ROCMFORGE_ROOT (a source checkout: include/, target/release/);
// 2. pkg-config rocmforge (after `make install`);
// 3. this repository (../../), when building from the source tree.
'use strict';
const { execSync } = require('child_process');
const path = require('path');
const what = process.argv[2];
const root = process.env.ROCMFORGE_ROOT;
function fromRoot(r) {
  return what === 'include' ? path.join(r, 'include') : path.join(r, 'target', 'release');
}
if (root) {
  console.log(fromRoot(root));
} else {
  try {
    const v = what === 'include' ? 'includedir' : 'libdir';
    console.log(execSync(`pkg-config --variable=${v} rocmforge`, { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim());
  } catch {
    console.log(fromRoot(path.resolve(__dirname, '..', '..')));
  }
}
