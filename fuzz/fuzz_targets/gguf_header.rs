//! Fuzz the GGUF loader: any byte string must parse to Ok or Err, never panic
//! or read out of bounds. When it parses, every tensor's data view must lie
//! inside the buffer and dequantize (if the type is supported) without panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rocmforge::gguf::GgufFile;
use rocmforge::quant;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = GgufFile::from_bytes(data.to_vec()) {
        for t in f.tensors() {
            let bytes = f.tensor_data(t);
            assert_eq!(bytes.len() as u64, t.n_bytes);
            if quant::is_supported(t.ty) && t.n_bytes <= 1 << 16 {
                let _ = quant::dequantize_vec(t.ty, bytes);
            }
        }
        let _ = f.architecture();
    }
});
