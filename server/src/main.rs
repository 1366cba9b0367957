//! `rocmforge-server --model FILE.gguf`: the OpenAI-compatible server.
use clap::Parser;

#[derive(Parser)]
#[command(name = "rocmforge-server", version, about = "An OpenAI-compatible server with continuous batching over ROCmForge")]
struct Cli {
    /// The GGUF model file.
    #[arg(short, long)]
    model: std::path::PathBuf,
    #[command(flatten)]
    args: rocmforge_server::ServeArgs,
}

fn main() -> std::process::ExitCode {
    rocmforge_server::init_logging();
    let cli = Cli::parse();
    match rocmforge_server::serve_blocking(rocmforge_server::ServeOptions { model: cli.model, args: cli.args }) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rocmforge-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
