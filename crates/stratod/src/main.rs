//! `stratod`, the node agent. Thin: parses options and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let opts = stratod::Options::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stratod: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let ran = rt.block_on(stratod::run(opts));
    // Bounded: `kato stop` waits for this process to be gone, and a blocking task stuck
    // in a system call must not keep it (and the node's files) for ever.
    rt.shutdown_timeout(std::time::Duration::from_secs(10));
    match ran {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratod: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
