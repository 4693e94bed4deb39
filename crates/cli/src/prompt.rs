//! Asking the user: only when stdin is a terminal and `-n/--no-prompt` was not given;
//! passwords are read with echo off.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, IsTerminal, Write};

/// True when questions can be asked.
pub fn interactive(no_prompt: bool) -> bool {
    !no_prompt && std::io::stdin().is_terminal()
}

/// Asks for a line of text; the trailing newline is removed.
pub fn ask(question: &str) -> Result<String> {
    eprint!("{question}");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the answer from the terminal")?;
    if n == 0 {
        bail!("no answer (end of input)");
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Asks a yes/no question; anything but y/yes is no.
pub fn confirm(question: &str) -> Result<bool> {
    let answer = ask(&format!("{question} [y/N] "))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// Asks for a password without echoing it.
pub fn password(question: &str) -> Result<String> {
    let _echo_off = EchoOff::new();
    let answer = ask(question);
    eprintln!();
    answer
}

/// Turns terminal echo off on stdin until dropped.
struct EchoOff {
    saved: Option<libc::termios>,
}

impl EchoOff {
    fn new() -> Self {
        // SAFETY: tcgetattr/tcsetattr only read and write the termios struct we own, on fd 0.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut term) != 0 {
                return EchoOff { saved: None };
            }
            let saved = term;
            term.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &term) != 0 {
                return EchoOff { saved: None };
            }
            EchoOff { saved: Some(saved) }
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = self.saved {
            // SAFETY: restores the settings read in `new` on the same fd.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &saved);
            }
        }
    }
}
