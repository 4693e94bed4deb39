//! `strato`, the developer's client: parses the command line and hands it to `commands`.

mod api;
mod cf;
mod cli;
mod commands;
mod config;
mod output;
mod prompt;
mod trust;
mod upload;

use clap::Parser;
use strato_cli::{error, manifest};

fn main() {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(error::EXIT_FAILED);
        }
    };
    if let Err(err) = runtime.block_on(commands::run(cli)) {
        eprintln!("error: {}", error_text(&err));
        std::process::exit(error::exit_code(&err));
    }
}

/// The error and its causes on one line, without repeating a cause already in the text.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
