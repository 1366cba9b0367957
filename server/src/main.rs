//! `rocmforge-server --model FILE.gguf`: the OpenAI-compatible server.
use clap::Parser;

#[derive(Parser)]
#[command(name = "rocmforge-server", version, about = "An OpenAI-compatible server with continuous batching over ROCmForge")]
struct Cli {
    #[command(flatten)]
    serve: rocmforge_server::ServeOptions,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ROCMFORGE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // HTTP work is light next to the engine thread's: a few workers
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rocmforge-server: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(rocmforge_server::serve(cli.serve)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rocmforge-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
