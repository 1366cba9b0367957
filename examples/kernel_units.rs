//! Write the kernel units the GPU backends compile at run time
//! (`rocmforge::backend::gpu::kernels::UNITS`, one per op file, each with
//! the headers and op files it includes, their kernels muted) into a
//! folder, so an offline compiler can check each: `make kernels-hip`
//! compiles them with hipcc for the CI's AMD targets.
//!
//! usage: kernel_units OUT_DIR

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: kernel_units OUT_DIR");
        std::process::exit(2)
    });
    std::fs::create_dir_all(&dir).expect("create the output folder");
    for (f, part, parts) in rocmforge::backend::gpu::kernels::unit_parts() {
        let p = std::path::Path::new(&dir).join(format!("{}-{part}.cu", f.trim_end_matches(".cu")));
        std::fs::write(&p, rocmforge::backend::gpu::kernels::unit_source(f, part, parts)).expect("write a unit");
        println!("{}", p.display());
    }
}
