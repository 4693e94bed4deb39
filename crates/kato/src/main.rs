//! `kato`, the operator's tool. Thin: parses the command line, talks to the local
//! `stratod` through its control socket ([`control`]), prints tables or JSON.

mod attach;
mod commands;
mod control;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = match commands::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return std::process::ExitCode::from(code);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kato: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(commands::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kato: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
